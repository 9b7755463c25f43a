// qk_edit_cpp: the C++ twin of `qk-edit`, and the example of embedding the runtime.
//
//   qk_edit_cpp --bundle DIR --image in.png --instruction "make the red circle blue"
//               [--box x0,y0,x1,y1] --out out.png [--seed S] [--steps N]
//               [--text-guidance G] [--image-guidance G] [--sparse auto|none|region]
//               [--threads N] [--backend ort-cpu|tensorrt] [--engine-dir DIR] [--no-verify]
//               [--json timings.json] [--overwrite-input]
//
// Errors print one line and exit with status 2; warnings (a truncated instruction) one line each.
// Outputs are checked before the edit (as qk-edit's): neither --out nor --json may lie inside a
// folder the bundle reads, --json may not be --image or --out, and --out may be --image only with
// --overwrite-input.
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "qk/qk.hpp"

namespace {

const char* kUsage =
    "usage: qk_edit_cpp --bundle DIR --image IN.png --instruction TEXT [--box x0,y0,x1,y1] --out OUT.png\n"
    "                   [--seed S] [--steps N] [--text-guidance G] [--image-guidance G]\n"
    "                   [--sparse auto|none|region] [--threads N] [--backend ort-cpu|tensorrt]\n"
    "                   [--engine-dir DIR] [--no-verify] [--json TIMINGS.json] [--overwrite-input]\n";

long long parse_int(const std::string& flag, const std::string& text) {
    std::string t = text;
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    std::size_t start = 0;
    while (start < t.size() && std::isspace(static_cast<unsigned char>(t[start]))) ++start;
    t = t.substr(start);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno == ERANGE) throw qk::InputError(flag + " " + text + ": '" + text + "' is not an integer");
    return v;
}

double parse_float(const std::string& flag, const std::string& text) {
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0') throw qk::InputError(flag + " " + text + " is not a number");
    return v;
}

qk::Box parse_box(const std::string& text) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (;;) {
        std::size_t comma = text.find(',', start);
        parts.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    if (parts.size() != 4)
        throw qk::InputError("box '" + text + "' has " + std::to_string(parts.size()) + " values; it must be four integers x0,y0,x1,y1");
    long long v[4];
    for (int k = 0; k < 4; ++k) {
        v[k] = parse_int("--box", parts[static_cast<std::size_t>(k)]);
        if (v[k] < -(1LL << 30) || v[k] > (1LL << 30)) throw qk::InputError("box '" + text + "': values must be pixel coordinates");
    }
    return qk::Box{static_cast<int>(v[0]), static_cast<int>(v[1]), static_cast<int>(v[2]), static_cast<int>(v[3])};
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\', o += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            o += buf;
        } else o += c;
    }
    return o;
}

void write_json(const std::string& path, const qk::EditResult& r) {
    std::filesystem::path dir = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);  // as save_png does for --out
    std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp);
        if (!f) throw qk::InputError("cannot write " + path + ": " + std::strerror(errno));
        f << "{\"backend\": \"" << json_escape(r.backend) << "\", \"seed\": " << r.seed << ", \"steps\": " << r.steps
          << ", \"active_tokens\": " << r.active_tokens << ", \"timings\": {";
        bool first = true;
        for (const auto& [k, v] : r.timings) {
            f << (first ? "" : ", ") << "\"" << k << "\": " << v;
            first = false;
        }
        f << ", \"decoder_steps\": [";
        for (std::size_t k = 0; k < r.decoder_steps.size(); ++k) f << (k ? ", " : "") << r.decoder_steps[k];
        f << "]}}\n";
        if (!f) throw qk::InputError("cannot write " + path);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) throw qk::InputError("cannot write " + path);
}

namespace fs = std::filesystem;

fs::path real_path(const std::string& p) {
    std::error_code ec;
    fs::path r = fs::weakly_canonical(fs::absolute(p, ec), ec);
    return ec ? fs::absolute(p).lexically_normal() : r;
}

bool same_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    return real_path(a) == real_path(b) || fs::equivalent(a, b, ec);
}

bool inside(const fs::path& p, const fs::path& folder) {
    auto it = p.begin();
    for (const auto& part : folder) {
        if (part.empty()) continue;
        if (it == p.end() || *it != part) return false;
        ++it;
    }
    return true;
}

// runtime/files.py check_output: an output is not an input, nor a file inside the bundle's folders
void check_outputs(const std::string& out, const std::string& json_path, const std::string& image,
                   const std::vector<std::string>& folders, bool overwrite_input) {
    if (same_file(out, image) && !overwrite_input)
        throw qk::InputError("--out " + out + " is the --image file: the edit would replace your image; choose another --out, "
                             "or pass --overwrite-input to replace it on purpose");
    if (!json_path.empty() && (same_file(json_path, image) || same_file(json_path, out)))
        throw qk::InputError("--json " + json_path + " is the same file as --image or --out; give the timings their own file");
    for (const auto& [flag, path] : {std::pair<std::string, std::string>{"--out", out}, {"--json", json_path}}) {
        if (path.empty()) continue;
        for (const auto& f : folders)
            if (inside(real_path(path), fs::path(f)))
                throw qk::InputError(flag + " " + path + " lies inside the bundle folder " + f + ", which this command reads; "
                                     "writing there would change it: choose a " + flag + " outside it");
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string bundle, image, instruction, out, json_path;
    bool have_instruction = false, overwrite_input = false;
    std::optional<qk::Box> box;
    qk::EditOptions opt;
    qk::SessionOptions so;
    try {
        for (int i = 1; i < argc; ++i) {
            std::string a = argv[i];
            if (a == "-h" || a == "--help") {
                std::cout << kUsage;
                return 0;
            }
            if (a == "--no-verify") {
                so.verify = false;
                continue;
            }
            if (a == "--overwrite-input") {
                overwrite_input = true;
                continue;
            }
            static const std::set<std::string> kValued = {
                "--bundle", "--image", "--instruction", "--box", "--out", "--seed", "--steps", "--text-guidance",
                "--image-guidance", "--sparse", "--threads", "--backend", "--engine-dir", "--json"};
            if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos && kValued.count(a.substr(0, a.find('='))))
                throw qk::InputError("write " + a.substr(0, a.find('=')) + " VALUE with a space, not '=' (" + a + ")");
            if (!kValued.count(a)) throw qk::InputError("unknown option " + a + "\n" + kUsage);
            if (i + 1 >= argc) throw qk::InputError(a + " needs a value");
            std::string v = argv[++i];
            if (a == "--bundle") bundle = v;
            else if (a == "--image") image = v;
            else if (a == "--instruction") instruction = v, have_instruction = true;
            else if (a == "--box") box = parse_box(v);
            else if (a == "--out") out = v;
            else if (a == "--seed") {
                if (!v.empty() && v[0] == '-') throw qk::InputError("--seed " + v + "; must be an integer from 0 to 2**64 - 1");
                char* end = nullptr;
                errno = 0;
                unsigned long long s = std::strtoull(v.c_str(), &end, 10);
                if (v.empty() || *end != '\0' || errno == ERANGE)
                    throw qk::InputError("--seed " + v + "; must be an integer from 0 to 2**64 - 1");
                opt.seed = s;
            } else if (a == "--steps") {
                long long s = parse_int(a, v);
                if (s < 1 || s > 1000) throw qk::InputError("--steps " + v + "; must be an integer from 1 to 1000");
                opt.steps = static_cast<int>(s);
            } else if (a == "--text-guidance") opt.text_guidance = parse_float(a, v);
            else if (a == "--image-guidance") opt.image_guidance = parse_float(a, v);
            else if (a == "--sparse") {
                if (v == "auto") opt.sparse = qk::Sparse::Auto;
                else if (v == "none") opt.sparse = qk::Sparse::None;
                else if (v == "region") opt.sparse = qk::Sparse::Region;
                else throw qk::InputError("--sparse " + v + "; choose auto, none or region");
            } else if (a == "--threads") {
                long long t = parse_int(a, v);
                if (t < 0 || t > 1 << 20) throw qk::InputError("--threads " + v + "; must be 0 (one per core) or a number of threads");
                so.threads = static_cast<int>(t);
            } else if (a == "--backend") so.backend = v;
            else if (a == "--engine-dir") so.engine_dir = v;
            else if (a == "--json") json_path = v;
            else throw qk::InputError("unknown option " + a + "\n" + kUsage);
        }
        if (bundle.empty() || image.empty() || !have_instruction || out.empty())
            throw qk::InputError(std::string("--bundle, --image, --instruction and --out are required\n") + kUsage);

        qk::Session session(bundle, so);
        check_outputs(out, json_path, image, session.bundle().folders, overwrite_input);
        qk::Image in = qk::load_png(image);
        qk::EditResult r = session.edit(in, instruction, box, opt);
        for (const auto& w : r.warnings) std::cerr << "warning: " << w << "\n";
        qk::save_png(out, r.image);
        if (!json_path.empty()) write_json(json_path, r);
        std::printf("qk_edit_cpp: %s (%dx%d), %d steps, seed %llu, %s: total %.1f ms (decoder %.1f ms, open %.1f ms)\n",
                    out.c_str(), r.image.width, r.image.height, r.steps, static_cast<unsigned long long>(r.seed),
                    r.backend.c_str(), r.timings["total"], r.timings["decoder"], session.open_ms());
        return 0;
    } catch (const qk::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: internal: " << e.what() << "\n";
        return 3;
    }
}

#include "bundle.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "qk/qk.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qk {
namespace {

const char* kFormat = "qk-bundle";
const char* kNoise = "splitmix64-boxmuller-v1";
const char* kScheduler = "FlowMatchEulerDiscreteScheduler";
const char* kHint = "re-export it with qk-export (for example: qk-export --model CKPT --out DIR)";
const char* kRequired[] = {"text_encoder", "image_encoder", "image_decoder", "decoder"};
constexpr long long kMaxWiden = 8;  // composite.py MAX_WIDEN
// runtime/files.py and runtime/bundle.py: what a manifest may be and hold
constexpr std::size_t kMaxJsonBytes = 4 * 1024 * 1024;
constexpr int kMaxJsonDepth = 64;
constexpr int kMaxSteps = 1000;
constexpr double kGuidanceMin = 0.0, kGuidanceMax = 100.0, kShiftMin = 0.01, kShiftMax = 100.0;
constexpr int kMaxHalo = 64;
const char* kSharedGraph = "text_encoder";
const char* kSiblingRule = "only the text encoder may come from outside the bundle, as ../<sibling>/<file> of a bundle "
                           "beside this one that lists <file> as its own text encoder with the same sha256 "
                           "(qk-export --text-encoder-from)";

std::string dump(const json& j) { return j.dump(); }

Dim num(long long v) { return Dim{v, ""}; }
Dim axis(const char* a) { return Dim{-1, a}; }

TensorSpec f32(const char* name, std::vector<Dim> shape) { return TensorSpec{name, DType::F32, std::move(shape)}; }

// One axis range (min, opt, max) per dynamic axis, as contract.py's axis_ranges.
json profile_of(const std::vector<TensorSpec>& inputs, const std::map<std::string, std::array<long long, 3>>& ranges) {
    json prof = json::object();
    const char* keys[3] = {"min", "opt", "max"};
    for (const auto& t : inputs) {
        json entry = json::object();
        for (int k = 0; k < 3; ++k) {
            json shape = json::array();
            for (const auto& d : t.shape) shape.push_back(d.axis.empty() ? d.value : ranges.at(d.axis)[k]);
            entry[keys[k]] = shape;
        }
        prof[t.name] = entry;
    }
    return prof;
}

struct TooDeep {};

// runtime/files.py read_json: at most kMaxJsonBytes bytes and kMaxJsonDepth levels
json read_json_limited(const fs::path& p, const std::string& fix) {
    std::ifstream in(p, std::ios::binary);
    if (!in) throw BundleError("cannot read " + p.string() + "; " + fix);
    std::string text(kMaxJsonBytes + 1, '\0');
    in.read(&text[0], static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxJsonBytes)
        throw BundleError(p.string() + " is " + std::to_string(text.size()) + " bytes or more, over the limit of " +
                          std::to_string(kMaxJsonBytes) + " for this file; " + fix);
    json::parser_callback_t limit = [](int depth, json::parse_event_t event, json&) {
        if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
            depth >= kMaxJsonDepth)
            throw TooDeep{};
        return true;
    };
    try {
        return json::parse(text, limit);
    } catch (const TooDeep&) {
        throw BundleError(p.string() + " is nested more than " + std::to_string(kMaxJsonDepth) + " levels deep, over the limit; " + fix);
    } catch (const json::exception& e) {
        throw BundleError(p.string() + " is not valid JSON (" + e.what() + "); " + fix);
    }
}

fs::path real_path(const fs::path& p) {
    std::error_code ec;
    fs::path r = fs::weakly_canonical(fs::absolute(p, ec), ec);
    return ec ? fs::absolute(p).lexically_normal() : r;
}

bool is_inside(const fs::path& p, const fs::path& folder) {
    auto it = p.begin();
    for (const auto& part : folder) {
        if (part.empty()) continue;
        if (it == p.end() || *it != part) return false;
        ++it;
    }
    return true;
}

json read_manifest(const fs::path& folder) {
    std::error_code ec;
    if (!fs::exists(folder, ec))
        throw BundleError("bundle folder " + folder.string() + " does not exist; " + kHint);
    if (!fs::is_directory(folder, ec))
        throw BundleError("bundle " + folder.string() + " is not a folder; a bundle is the folder qk-export writes");
    fs::path mpath = folder / "manifest.json";
    if (!fs::is_regular_file(mpath, ec))
        throw BundleError(folder.string() + " has no manifest.json, so it is not a bundle (or an unfinished one); " + kHint);
    if (real_path(mpath).parent_path() != real_path(folder))
        throw BundleError(mpath.string() + " is a link to " + real_path(mpath).string() +
                          ", outside the bundle; a bundle's manifest must be a file in its folder: " + kHint);
    json m = read_json_limited(mpath, std::string("the bundle is corrupt: ") + kHint);
    if (!m.is_object()) throw BundleError(mpath.string() + " does not hold a JSON object; " + kHint);
    if (m.value("format", json()) != json(kFormat))
        throw BundleError(mpath.string() + " has format " + dump(m.value("format", json())) + ", not \"" + kFormat +
                          "\"; point --bundle at a folder qk-export wrote");
    const json& v = m.value("format_version", json());
    if (!v.is_number_integer())
        throw BundleError(mpath.string() + " has format_version " + dump(v) + "; expected the integer " +
                          std::to_string(kFormatVersion) + "; " + kHint);
    long long version = v.get<long long>();
    if (version > kFormatVersion)
        throw BundleError(mpath.string() + " has format_version " + std::to_string(version) +
                          ", newer than this runtime reads (" + std::to_string(kFormatVersion) +
                          "); upgrade query-kontext or export with the matching version");
    if (version < kMinFormatVersion)
        throw BundleError(mpath.string() + " has format_version " + std::to_string(version) + "; this runtime reads " +
                          std::to_string(kMinFormatVersion) + ".." +
                          std::to_string(kFormatVersion) + ": " + kHint);
    for (const char* k : {"dims", "graphs", "sampler", "files", "precision"})
        if (!m.contains(k)) throw BundleError(mpath.string() + " lacks '" + k + "'; " + kHint);
    return m;
}

// runtime/files.py path_parts: a relative POSIX path; '..' only as leading parts where allowed
std::vector<std::string> path_parts(const json& rel, const std::string& where, bool allow_up) {
    if (!rel.is_string()) throw BundleError(where + ": file name " + dump(rel) + " must be a relative path inside the bundle folder");
    const std::string r = rel.get<std::string>();
    if (r.empty() || r.find('\\') != std::string::npos || r.find('\0') != std::string::npos || r[0] == '/')
        throw BundleError(where + ": file name " + dump(rel) + " must be a relative path inside the bundle folder, with '/' separators");
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (;;) {
        std::size_t slash = r.find('/', start);
        parts.push_back(r.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
        if (slash == std::string::npos) break;
        start = slash + 1;
    }
    std::size_t ups = 0;
    for (const auto& p : parts)
        if (p.empty() || p == ".")
            throw BundleError(where + ": file name " + dump(rel) + " has an empty or '.' part; write it as a plain relative path");
    while (ups < parts.size() && parts[ups] == "..") ++ups;
    bool later_up = false;
    for (std::size_t k = ups; k < parts.size(); ++k) later_up = later_up || parts[k] == "..";
    if (later_up || (ups && !allow_up) || ups == parts.size())
        throw BundleError(where + ": file name " + dump(rel) + " leaves the bundle folder ('..'); every file a manifest "
                          "names must lie inside the bundle");
    return parts;
}

// runtime/files.py contained: folder / rel resolved (symlinks followed), inside the folder
fs::path contained(const fs::path& folder, const json& rel, const std::string& where) {
    std::vector<std::string> parts = path_parts(rel, where, false);
    fs::path base = real_path(folder), p = base;
    for (const auto& part : parts) p /= part;
    fs::path r = real_path(p);
    if (!is_inside(r, base) || r == base)
        throw BundleError(where + ": " + dump(rel) + " resolves to " + r.string() + ", outside " + base.string() +
                          "; a manifest may name only files inside its bundle (a symlink out of the bundle counts as outside)");
    return r;
}

// The files a graph entry uses: its file, a `<file>.data` beside it, its external data.
std::vector<std::string> graph_files(const json& entry) {
    std::vector<std::string> out;
    if (!entry.is_object() || !entry.contains("file") || !entry["file"].is_string()) return out;
    std::string file = entry["file"];
    out.push_back(file);
    out.push_back(file + ".data");
    if (entry.contains("external_data") && entry["external_data"].is_string()) {
        std::size_t slash = file.rfind('/');
        out.push_back((slash == std::string::npos ? std::string() : file.substr(0, slash + 1)) + entry["external_data"].get<std::string>());
    }
    return out;
}

// runtime/bundle.py _sibling_file: the shared text encoder's ../<sibling>/<file>
fs::path sibling_file(const fs::path& folder, const std::string& rel, const std::string& sha, const std::string& where,
                      fs::path& sibling_out) {
    std::vector<std::string> parts = path_parts(json(rel), where, true);
    if (parts.size() < 3 || parts[0] != ".." || parts[1] == "..")
        throw BundleError(where + ": \"" + rel + "\" leaves the bundle folder; " + kSiblingRule);
    fs::path base = real_path(folder), sibling = base.parent_path() / parts[1], real = real_path(sibling);
    if (real.parent_path() != base.parent_path() || real == base)
        throw BundleError(where + ": \"" + rel + "\" names " + sibling.string() + ", which resolves to " + real.string() +
                          ", not a bundle beside " + base.string() + "; " + kSiblingRule);
    std::string inner = parts[2];
    for (std::size_t k = 3; k < parts.size(); ++k) inner += "/" + parts[k];
    json theirs;
    try {
        theirs = read_manifest(real);
    } catch (const BundleError& e) {
        throw BundleError(where + ": \"" + rel + "\" names the sibling bundle " + real.string() + ", which cannot be read (" +
                          e.what() + "); " + kSiblingRule);
    }
    const json& graphs = theirs["graphs"];
    std::vector<std::string> own = graphs.is_object() && graphs.contains(kSharedGraph) ? graph_files(graphs[kSharedGraph])
                                                                                       : std::vector<std::string>{};
    const json& files = theirs["files"];
    bool listed = std::find(own.begin(), own.end(), inner) != own.end() && files.is_object() && files.contains(inner) &&
                  files[inner] == json(sha);
    if (!listed)
        throw BundleError(where + ": \"" + rel + "\": the sibling bundle " + real.string() + " does not list \"" + inner +
                          "\" as its own text encoder with sha256 " + sha.substr(0, 16) + "...; " + kSiblingRule);
    sibling_out = real;
    return contained(real, json(inner), (real / "manifest.json").string() + " files");
}

std::map<std::string, std::string> check_files(const fs::path& folder, const json& manifest, bool verify,
                                               std::map<std::string, std::string>& paths, std::vector<std::string>& folders) {
    std::string where = (folder / "manifest.json").string();
    const json& files = manifest["files"];
    if (!files.is_object() || files.empty())
        throw BundleError(where + ": 'files' must map file names to sha256; " + kHint);
    const json& graphs = manifest["graphs"];
    std::vector<std::string> shared =
        graphs.is_object() && graphs.contains(kSharedGraph) ? graph_files(graphs[kSharedGraph]) : std::vector<std::string>{};
    folders = {real_path(folder).string()};
    std::map<std::string, std::string> out;
    for (const auto& [rel, want] : files.items()) {
        if (!want.is_string()) throw BundleError(where + ": the sha256 of " + rel + " must be a string; " + kHint);
        out[rel] = want.get<std::string>();
        fs::path p;
        if (rel.rfind("../", 0) == 0 && std::find(shared.begin(), shared.end(), rel) != shared.end()) {
            fs::path sibling;
            p = sibling_file(folder, rel, out[rel], where + " files", sibling);
            if (std::find(folders.begin(), folders.end(), sibling.string()) == folders.end()) folders.push_back(sibling.string());
        } else {
            p = contained(folder, json(rel), where + " files");
        }
        paths[rel] = p.string();
    }
    for (const auto& [rel, sha] : out) {
        fs::path p(paths[rel]);
        std::error_code ec;
        if (!fs::is_regular_file(p, ec))
            throw BundleError("bundle " + folder.string() + " is missing " + rel + " (listed in manifest.json); " + kHint);
        if (!verify) continue;
        std::string have = sha256_file(p.string());
        if (have != sha)
            throw BundleError("bundle " + folder.string() + ": " + rel + " has sha256 " + have.substr(0, 16) +
                              "..., but manifest.json records " + sha.substr(0, 16) +
                              "...; the file was changed or damaged after export: " + kHint);
    }
    return out;
}

Dims read_dims(const json& raw, int format_version, const std::string& where) {
    static const char* names[] = {"image_size", "latent_channels", "factor", "patch", "max_length", "text_width",
                                  "kontext_tokens", "width"};
    const bool with_depth = format_version >= 3;  // the decoder depth entered the dims with decoder_cond
    bool ok = raw.is_object() && raw.size() == (with_depth ? 9u : 8u) && (!with_depth || raw.contains("depth"));
    for (const char* n : names) ok = ok && raw.contains(n);
    if (!ok) throw BundleError(where + ": 'dims' must have exactly image_size, latent_channels, factor, patch, "
                               "max_length, text_width, kontext_tokens, width" + std::string(with_depth ? ", depth" : "") +
                               "; has " + dump(raw) + "; " + kHint);
    // runtime/bundle.py DIM_LIMITS
    static const std::map<std::string, long long> limits{{"image_size", 8192}, {"latent_channels", 1024}, {"factor", 64},
                                                         {"patch", 64}, {"max_length", 4096}, {"text_width", 65536},
                                                         {"kontext_tokens", 4096}, {"width", 65536}, {"depth", 1024}};
    for (const auto& [k, v] : raw.items()) {
        if (!v.is_number_integer() || v.get<long long>() < 0)
            throw BundleError(where + ": 'dims' values must be non-negative integers, got " + dump(raw));
        if (v.get<long long>() > limits.at(k))
            throw BundleError(where + ": dims." + k + "=" + dump(v) + " is over the limit of " + std::to_string(limits.at(k)) + "; " + kHint);
    }
    Dims d;
    d.image_size = raw["image_size"];
    d.latent_channels = raw["latent_channels"];
    d.factor = raw["factor"];
    d.patch = raw["patch"];
    d.max_length = raw["max_length"];
    d.text_width = raw["text_width"];
    d.kontext_tokens = raw["kontext_tokens"];
    d.width = raw["width"];
    if (with_depth) {
        d.depth = raw["depth"];
        if (d.depth < 1)
            throw BundleError(where + ": dims.depth must be the decoder's block count (>= 1), got " + dump(raw["depth"]) + "; " + kHint);
    }
    if (d.factor < 1 || d.patch < 1 || d.image_size % d.factor || d.latent_size() % d.patch || d.image_size < 1 ||
        d.latent_channels < 1 || d.max_length < 1 || d.text_width < 1)
        throw BundleError(where + ": inconsistent dims " + dump(raw) + ": image_size / factor / patch must divide evenly");
    return d;
}

std::vector<TensorSpec> read_tensors(const json& raw, const std::string& where) {
    if (!raw.is_array()) throw BundleError(where + ": tensors must be a list of {name, dtype, shape}; " + kHint);
    std::vector<TensorSpec> out;
    for (const auto& t : raw) {
        if (!t.is_object() || !t.contains("name") || !t.contains("dtype") || !t.contains("shape") ||
            !t["name"].is_string() || !t["dtype"].is_string() || !t["shape"].is_array())
            throw BundleError(where + ": tensors must be a list of {name, dtype, shape}, got " + dump(t) + "; " + kHint);
        TensorSpec s;
        s.name = t["name"];
        std::string dt = t["dtype"];
        if (dt == "float32")
            s.dtype = DType::F32;
        else if (dt == "int64")
            s.dtype = DType::I64;
        else
            throw BundleError(where + ": tensor " + s.name + " has dtype " + dt + "; the contract uses float32 and int64");
        for (const auto& d : t["shape"]) {
            if (d.is_number_integer())
                s.shape.push_back(num(d.get<long long>()));
            else if (d.is_string())
                s.shape.push_back(Dim{-1, d.get<std::string>()});
            else
                throw BundleError(where + ": tensor " + s.name + " has a bad shape " + dump(t["shape"]));
        }
        out.push_back(std::move(s));
    }
    return out;
}

std::string specs_str(const std::vector<TensorSpec>& ts) {
    std::string s = "[";
    for (std::size_t k = 0; k < ts.size(); ++k) {
        s += (k ? ", (" : "(") + ts[k].name + ", " + dtype_name(ts[k].dtype) + ", [";
        for (std::size_t j = 0; j < ts[k].shape.size(); ++j)
            s += (j ? ", " : "") + (ts[k].shape[j].axis.empty() ? std::to_string(ts[k].shape[j].value) : ts[k].shape[j].axis);
        s += "])";
    }
    return s + "]";
}

SamplerConfig read_sampler(const json& s, const std::string& where) {
    if (!s.is_object()) throw BundleError(where + ": 'sampler' must be an object; " + kHint);
    if (s.value("scheduler", json(kScheduler)) != json(kScheduler))
        throw BundleError(where + ": sampler.scheduler " + dump(s["scheduler"]) + " is not supported; this runtime runs " +
                          kScheduler);
    if (s.value("noise", json(kNoise)) != json(kNoise))
        throw BundleError(where + ": sampler.noise " + dump(s["noise"]) + " is not supported; this runtime draws " + kNoise);
    SamplerConfig c;
    // runtime/bundle.py _number: finite, an integer where asked, within [lo, hi]
    auto number = [&](const char* k, double lo, double hi, bool integer) -> double {
        if (!s.contains(k)) throw BundleError(where + ": sampler." + k + " is missing; " + kHint);
        const json& v = s[k];
        double d = v.is_number() ? v.get<double>() : NAN;
        if (!v.is_number() || !std::isfinite(d) || (integer && d != std::floor(d)))
            throw BundleError(where + ": sampler." + k + "=" + dump(v) + "; must be " + (integer ? "an integer" : "a number") +
                              " from " + dump(json(lo)) + " to " + dump(json(hi)) + "; " + kHint);
        if (d < lo || d > hi)
            throw BundleError(where + ": sampler." + k + "=" + dump(v) + " is outside " + dump(json(lo)) + ".." + dump(json(hi)) + "; " + kHint);
        return d;
    };
    c.steps = static_cast<int>(number("steps", 1, kMaxSteps, true));
    c.text_guidance = number("text_guidance", kGuidanceMin, kGuidanceMax, false);
    c.image_guidance = number("image_guidance", kGuidanceMin, kGuidanceMax, false);
    if (!s.contains("gate_threshold"))
        throw BundleError(where + ": sampler.gate_threshold is missing (null for the soft gate); " + kHint);
    if (!s["gate_threshold"].is_null()) c.gate_threshold = number("gate_threshold", 0.0, 1.0, false);
    if (s.contains("gen_guidance") && !s["gen_guidance"].is_null()) number("gen_guidance", kGuidanceMin, kGuidanceMax, false);
    if (s.contains("shift")) c.shift = number("shift", kShiftMin, kShiftMax, false);
    if (s.contains("halo")) c.halo = static_cast<int>(number("halo", 0, kMaxHalo, true));
    if (s.contains("region_buckets")) {
        const json& b = s["region_buckets"];
        bool ok = b.is_array() && !b.empty() && b.size() <= 1024;
        c.region_buckets.clear();
        for (std::size_t k = 0; ok && k < b.size(); ++k) {
            double v = b[k].is_number() ? b[k].get<double>() : NAN;
            ok = b[k].is_number() && std::isfinite(v) && v > 0 && v <= 1 && (k == 0 || v > c.region_buckets.back());
            c.region_buckets.push_back(v);
        }
        if (!ok || c.region_buckets.back() != 1.0)
            throw BundleError(where + ": sampler.region_buckets=" + dump(b) + "; must be increasing fractions in (0, 1] "
                              "ending with 1.0; " + kHint);
    }
    if (s.contains("codec") && !s["codec"].is_null() && !s["codec"].is_string())
        throw BundleError(where + ": sampler.codec=" + dump(s["codec"]) + "; must be a string; " + kHint);
    return c;
}

// runtime/bundle.py _composite and composite.py Composite.from_dict
Composite read_composite(const json& m, int format_version, const std::string& where) {
    Composite c;
    if (!m.contains("composite")) return c;  // formats 1-3: the gate alone
    if (format_version < kCompositeFormatVersion)
        throw BundleError(where + ": 'composite' needs format_version " + std::to_string(kCompositeFormatVersion) +
                          " or newer (this manifest has " + std::to_string(format_version) + ", whose runtimes ignore it); " + kHint);
    const json& raw = m["composite"];
    const std::string bad = where + ": 'composite' ";
    if (!raw.is_object() || !raw.contains("kind"))
        throw BundleError(bad + "must be an object with a 'kind' (gate or changed), got " + dump(raw) + "; " + kHint);
    const json& kind = raw["kind"];
    if (kind != json("gate") && kind != json("changed"))
        throw BundleError(bad + "kind " + dump(kind) + " is not one this runtime applies; choose one of gate, changed; " + kHint);
    const bool gate = kind == json("gate");
    for (const auto& [k, _] : raw.items())
        if (k != "kind" && (gate || (k != "lo" && k != "hi" && k != "widen")))
            throw BundleError(bad + "has an unknown key '" + k + "' for kind " + dump(kind) + "; " + kHint);
    if (gate) return c;
    for (const char* k : {"lo", "hi", "widen"})
        if (!raw.contains(k)) throw BundleError(bad + "kind \"changed\" needs '" + k + "'; " + kHint);
    for (const char* k : {"lo", "hi"})
        if (!raw[k].is_number() || !std::isfinite(raw[k].get<double>()))
            throw BundleError(bad + k + "=" + dump(raw[k]) + "; must be a finite number in [0, 1]; " + kHint);
    c.kind = Composite::Kind::Changed;
    c.lo = raw["lo"].get<double>();
    c.hi = raw["hi"].get<double>();
    if (!(0.0 <= c.lo && c.lo < c.hi && c.hi <= 1.0))
        throw BundleError(bad + "lo=" + dump(raw["lo"]) + ", hi=" + dump(raw["hi"]) + "; need 0 <= lo < hi <= 1; " + kHint);
    const json& widen = raw["widen"];
    if (!widen.is_number_integer() || widen.get<long long>() < 0 || widen.get<long long>() > kMaxWiden)
        throw BundleError(bad + "widen=" + dump(widen) + "; must be an integer from 0 to " + std::to_string(kMaxWiden) + "; " + kHint);
    c.widen = widen.get<int>();
    return c;
}

// runtime/bundle.py _few_step: format 5's entry, exactly `steps` and the fixed values of
// contract.py FEW_STEP_FIELDS; unset without one
std::optional<FewStep> read_few_step(const json& m, int format_version, const std::string& where) {
    if (!m.contains("few_step")) return std::nullopt;
    if (format_version < kFewStepFormatVersion)
        throw BundleError(where + ": 'few_step' needs format_version " + std::to_string(kFewStepFormatVersion) +
                          " or newer (this manifest has " + std::to_string(format_version) +
                          ", whose decoders take no step_size); " + kHint);
    const json& raw = m["few_step"];
    const char* keys[] = {"other_step_size", "sigmas", "step_size", "steps"};  // sorted
    const std::string want = "[\"other_step_size\", \"sigmas\", \"step_size\", \"steps\"]";
    bool keys_ok = raw.is_object() && raw.size() == 4;
    for (const char* k : keys) keys_ok = keys_ok && raw.contains(k);
    if (!keys_ok) {
        json have = raw;
        if (raw.is_object()) {
            have = json::array();
            for (const auto& [k, _] : raw.items()) have.push_back(k);
        }
        throw BundleError(where + ": 'few_step' must be an object with exactly the keys " + want + ", has " + dump(have) + "; " + kHint);
    }
    const std::string upgrade = " (a newer sampler? upgrade query-kontext, or " + std::string(kHint) + ")";
    for (const char* k : {"sigmas", "step_size"}) {
        const char* value = std::string(k) == "sigmas" ? "uniform" : "sigma - sigma_next";
        if (raw[k] != json(value))
            throw BundleError(where + ": few_step." + k + "=" + dump(raw[k]) + "; this runtime runs only \"" + value + "\"" + upgrade);
    }
    const json& other = raw["other_step_size"];
    if (!other.is_number() || other.get<double>() != 0.0)
        throw BundleError(where + ": few_step.other_step_size=" + dump(other) + "; this runtime runs only 0.0" + upgrade);
    const json& steps = raw["steps"];
    FewStep f;
    bool ok = steps.is_array() && !steps.empty() && steps.size() <= static_cast<std::size_t>(kMaxSteps);
    for (std::size_t k = 0; ok && k < steps.size(); ++k) {
        ok = steps[k].is_number_integer() && steps[k].get<long long>() >= 1 && steps[k].get<long long>() <= kMaxSteps;
        if (ok) f.steps.push_back(steps[k].get<int>());
        ok = ok && (k == 0 || f.steps[k] > f.steps[k - 1]);
    }
    if (!ok)
        throw BundleError(where + ": few_step.steps=" + dump(steps) + "; must be a non-empty list of increasing integer step "
                          "counts from 1 to " + std::to_string(kMaxSteps) + "; " + kHint);
    return f;
}

// a graph's own precision (a shared text encoder's may differ), else the bundle's
std::string graph_precision(const json& m, const std::string& graph) {
    const json& g = m["graphs"][graph];
    if (g.is_object() && g.contains("precision")) return g["precision"].is_string() ? g["precision"].get<std::string>() : dump(g["precision"]);
    return m["precision"].get<std::string>();
}

// runtime/bundle.py _weight_only: `quantization.weight_only`, distinct names of INT8 graphs of this
// bundle; without it the INT8 ones of kWeightOnlyInt8Graphs
std::set<std::string> read_weight_only(const json& m, const std::map<std::string, GraphInfo>& graphs, const std::string& where) {
    std::set<std::string> out;
    const json q = m.value("quantization", json());
    if (!q.is_null() && !q.is_object())
        throw BundleError(where + ": 'quantization' must be an object (or null), got " + dump(q) + "; " + kHint);
    if (q.is_null() || !q.contains("weight_only")) {
        for (const char* g : kWeightOnlyInt8Graphs)
            if (graphs.count(g) && graph_precision(m, g) == "int8") out.insert(g);
        return out;
    }
    const json& names = q["weight_only"];
    bool ok = names.is_array();
    for (const auto& n : ok ? names : json::array()) ok = ok && n.is_string() && out.insert(n.get<std::string>()).second;
    if (!ok)
        throw BundleError(where + ": quantization.weight_only=" + dump(names) + "; must be a list of distinct graph names; " + kHint);
    for (const auto& n : names) {  // in the manifest's order, as bundle.py reports the first wrong one
        const std::string name = n.get<std::string>();
        if (!graphs.count(name)) {
            std::string have;
            for (const auto& [g, _] : graphs) have += (have.empty() ? "" : ", ") + g;
            throw BundleError(where + ": quantization.weight_only names '" + name + "', which is not a graph of this bundle (" +
                              have + "); " + kHint);
        }
        if (graph_precision(m, name) != "int8")
            throw BundleError(where + ": quantization.weight_only names '" + name + "', whose precision is '" +
                              graph_precision(m, name) + "', not 'int8' (only INT8 graphs can be weight-only); " + kHint);
    }
    return out;
}

}  // namespace

bool FewStep::runs(int n) const { return std::find(steps.begin(), steps.end(), n) != steps.end(); }

const GraphInfo& Bundle::graph(const std::string& g) const {
    auto it = graphs.find(g);
    if (it == graphs.end()) throw BundleError("graph '" + g + "' is not in bundle " + path);
    return it->second;
}

std::string Bundle::sha() const {
    // json.dumps(dict(sorted(files.items())), separators=(",", ":"), sort_keys=True), less the golden
    // outputs of qk-build --golden (runtime/contract.py GOLDEN_FILES: they change no engine)
    json j = json::object();
    for (const auto& [k, v] : files)
        if (k != "golden.json" && k != "golden.npz") j[k] = v;
    return sha256_hex(j.dump(-1, ' ', true));
}

std::map<std::string, GraphInfo> contract_graphs(const Dims& d, bool gateway, bool gate, bool region, int format_version,
                                                 bool step_size) {
    if (step_size && format_version < kFewStepFormatVersion)
        throw BundleError("a step_size input needs format " + std::to_string(kFewStepFormatVersion) + " or newer, got " +
                          std::to_string(format_version));
    const long long S = d.image_size, C = d.latent_channels, h = d.latent_size();
    const Dim B = axis("batch");
    std::map<std::string, std::array<long long, 3>> batch3{{"batch", {1, kMaxBatch, kMaxBatch}}};
    std::map<std::string, std::array<long long, 3>> batch2{{"batch", {1, 1, 2}}};
    std::vector<TensorSpec> cond{f32("text", {B, num(d.max_length), num(d.text_width)}), f32("text_mask", {B, num(d.max_length)})};
    std::vector<TensorSpec> image_inputs{f32("source", {B, num(C), num(h), num(h)}), f32("region", {B, num(1), num(h), num(h)})};
    std::map<std::string, GraphInfo> g;
    auto add = [&](const char* name, std::vector<TensorSpec> in, std::vector<TensorSpec> out,
                   const std::map<std::string, std::array<long long, 3>>& ranges) {
        GraphInfo info;
        info.name = name;
        info.file = std::string(name) + ".onnx";
        info.profile = profile_of(in, ranges);
        info.inputs = std::move(in);
        info.outputs = std::move(out);
        g[name] = std::move(info);
    };
    // Format 2: the token axis is dynamic (this runtime still feeds max_length tokens; both work).
    const Dim T = format_version >= 2 ? axis("text_tokens") : num(d.max_length);
    auto text_ranges = batch3;
    if (format_version >= 2) text_ranges["text_tokens"] = {1, std::min<long long>(16, d.max_length), d.max_length};
    add("text_encoder", {TensorSpec{"input_ids", DType::I64, {B, T}}, TensorSpec{"attention_mask", DType::I64, {B, T}}},
        {f32("hidden", {B, T, num(d.text_width)})}, text_ranges);
    add("image_encoder", {f32("image", {B, num(3), num(S), num(S)})}, {f32("latent", {B, num(C), num(h), num(h)})}, batch2);
    add("image_decoder", {f32("latent", {B, num(C), num(h), num(h)})}, {f32("image", {B, num(3), num(S), num(S)})}, batch2);
    TensorSpec kontext = f32("kontext", {B, num(d.kontext_tokens), num(d.width)});
    if (gateway) {
        std::vector<TensorSpec> in = cond;
        in.insert(in.end(), image_inputs.begin(), image_inputs.end());
        in.push_back(f32("flags", {B, num(2)}));
        add("gateway", in, {kontext}, batch3);
    }
    if (gate && gateway) {
        std::vector<TensorSpec> in{kontext};
        in.insert(in.end(), image_inputs.begin(), image_inputs.end());
        add("cmg", in, {f32("gate", {B, num(d.tokens())})}, {{"batch", {1, 1, kMaxBatch}}});
    }
    std::vector<TensorSpec> step{f32("x", {B, num(C), num(h), num(h)}), f32("sigma", {B})};
    if (format_version >= 3) {  // decoder_cond makes the steps' conditioning once per edit
        const long long n_cond = d.max_length + (gateway ? d.kontext_tokens : 0);
        std::vector<TensorSpec> step_cond{f32("cond_kv", {B, num(n_cond), num(d.cond_width())}),
                                          f32("cond_bias", {B, num(n_cond)}), f32("cond_emb", {B, num(d.width)})};
        std::vector<TensorSpec> in = cond;
        if (gateway) in.push_back(kontext);
        in.push_back(f32("flags", {B, num(2)}));
        add("decoder_cond", in, step_cond, batch3);
        if (step_size) step.push_back(f32("step_size", {B}));
        step.insert(step.end(), step_cond.begin(), step_cond.end());
        step.insert(step.end(), image_inputs.begin(), image_inputs.end());
        step.push_back(f32("gate_map", {B, num(1), num(h), num(h)}));
    } else {
        step.insert(step.end(), cond.begin(), cond.end());
        if (gateway) step.push_back(kontext);
        step.insert(step.end(), image_inputs.begin(), image_inputs.end());
        step.push_back(f32("gate_map", {B, num(1), num(h), num(h)}));
        step.push_back(f32("flags", {B, num(2)}));
    }
    TensorSpec velocity = f32("velocity", {B, num(C), num(h), num(h)});
    add("decoder", step, {velocity}, batch3);
    if (region) {
        long long n = d.tokens();
        std::vector<TensorSpec> in = step;
        in.push_back(TensorSpec{"active", DType::I64, {B, axis("active")}});
        auto ranges = batch3;
        // contract.py: min the smallest region bucket (an eighth, n / 8 <= round(n / 8)), opt a quarter
        ranges["active"] = {std::max(1LL, n / 8), std::max(1LL, n / 4), n};
        add("decoder_region", in, {velocity}, ranges);
    }
    return g;
}

Bundle open_bundle(const std::string& path, bool verify) {
    fs::path folder(path);
    json m = read_manifest(folder);
    std::string where = (folder / "manifest.json").string();
    Bundle b;
    b.path = path;
    b.files = check_files(folder, m, verify, b.paths, b.folders);
    b.dims = read_dims(m["dims"], m["format_version"].get<int>(), where);

    const json& raw = m["graphs"];
    if (!raw.is_object()) throw BundleError(where + ": 'graphs' must be an object; " + kHint);
    for (const char* g : kRequired)
        if (!raw.contains(g)) throw BundleError(where + ": graph '" + g + "' is missing; " + kHint);
    b.few_step = read_few_step(m, m["format_version"].get<int>(), where);
    auto expected = contract_graphs(b.dims, raw.contains("gateway"), raw.contains("cmg"), raw.contains("decoder_region"),
                                    m["format_version"].get<int>(), b.few_step.has_value());
    for (const auto& [name, _] : expected)  // decoder_cond, from format 3 on
        if (!raw.contains(name))
            throw BundleError(where + ": graph '" + name + "' is missing (format_version " +
                              std::to_string(m["format_version"].get<int>()) + "); " + kHint);
    for (const auto& [name, _] : raw.items())
        if (!expected.count(name))
            throw BundleError(where + ": graph '" + name + "' is not in the export contract" +
                              (name == "cmg" ? " (a CMG needs a gateway in this contract)" : "") + "; " + kHint);
    for (auto& [name, spec] : expected) {
        const json& g = raw[name];
        if (!g.is_object() || !g.contains("file"))
            throw BundleError(where + ": graph '" + name + "' must give its 'file'; " + kHint);
        if (!g["file"].is_string() || !b.files.count(g["file"].get<std::string>()))
            throw BundleError(where + ": graph '" + name + "' file " + dump(g["file"]) + " has no sha256 in 'files'; " + kHint);
        if (g.contains("external_data") &&  // its weights: checked like the graph itself
            (!g["external_data"].is_string() || !b.files.count(g["external_data"].get<std::string>())))
            throw BundleError(where + ": graph '" + name + "' external data " + dump(g["external_data"]) +
                              " has no sha256 in 'files'; " + kHint);
        GraphInfo info;
        info.name = name;
        info.file = g["file"];
        info.path = b.paths.at(g["file"].get<std::string>());
        info.inputs = read_tensors(g.value("inputs", json()), where + " graph '" + name + "' inputs");
        info.outputs = read_tensors(g.value("outputs", json()), where + " graph '" + name + "' outputs");
        if (!(info.inputs == spec.inputs))
            throw BundleError(where + ": graph '" + name + "' inputs " + specs_str(info.inputs) + " differ from the contract's " +
                              specs_str(spec.inputs) + "; the bundle was written by another version of qk-export: " + kHint);
        if (!(info.outputs == spec.outputs))
            throw BundleError(where + ": graph '" + name + "' outputs " + specs_str(info.outputs) + " differ from the contract's " +
                              specs_str(spec.outputs) + "; the bundle was written by another version of qk-export: " + kHint);
        info.profile = (g.contains("profile") && g["profile"].is_object() && !g["profile"].empty()) ? g["profile"] : spec.profile;
        b.graphs[name] = std::move(info);
    }
    if (!b.files.count("tokenizer.json")) throw BundleError(where + ": tokenizer.json is not listed in 'files'; " + kHint);
    b.tokenizer_path = b.paths.at("tokenizer.json");
    const json& prec = m["precision"];
    // fp16 (qk-export --fp16): float16 graphs with float32 inputs and outputs, fed like the others
    if (prec != json("fp32") && prec != json("int8") && prec != json("fp16"))
        throw BundleError(where + ": precision " + dump(prec) + " must be 'fp32', 'int8' or 'fp16'");
    b.precision = prec;
    json sparse = m.value("sparse_attn", json("none"));
    if (sparse != json("none") && sparse != json("window") && sparse != json("region"))
        throw BundleError(where + ": sparse_attn " + dump(sparse) + " must be 'none', 'window' or 'region'");
    b.sparse_attn = sparse;
    if (b.sparse_attn == "region" && !b.has_region())
        throw BundleError(where + ": sparse_attn is 'region' but the decoder_region graph is missing; " + kHint);
    b.sampler = read_sampler(m["sampler"], where);
    b.composite = read_composite(m, m["format_version"].get<int>(), where);
    b.weight_only = read_weight_only(m, b.graphs, where);
    b.manifest = std::move(m);
    return b;
}

}  // namespace qk

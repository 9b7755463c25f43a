// qk_cpp_probe: the library's parts one at a time, for the pytest suite in tests/qk_runtime_cpp/
// (which compares each against the Python side). JSON in (stdin or files), JSON out (stdout).
//
//   qk_cpp_probe tokenize TOKENIZER.json MAX_LENGTH   < ["text", ...]   -> [{"ids", "mask", "truncated"}]
//   qk_cpp_probe noise SEED COUNT                                       -> [float32 bit patterns]
//   qk_cpp_probe sigmas STEPS SHIFT                                     -> [float32 bit patterns]
//   qk_cpp_probe few_step_sigmas STEPS                                  -> [float32 bit patterns]
//   qk_cpp_probe sha256 FILE...                                         -> ["hex", ...]
//   qk_cpp_probe png IN.png OUT.rgb                                     -> {"width", "height"} + raw RGB
//   qk_cpp_probe resize IN.png WIDTH HEIGHT OUT.png
//   qk_cpp_probe bundle DIR                                             -> {"precision", "weight_only", ...} or an error
//   qk_cpp_probe edits BUNDLE JOBS.json [THREADS]                       -> [{"out", "timings", ...}]
//        JOBS.json: [{"image", "instruction", "box"|null, "seed", "steps"|0, "sparse", "out"}]
//   qk_cpp_probe allocs BUNDLE IMAGE.png [THREADS]                      -> allocation counts (see below)
//
// Errors: {"error": code, "message": "..."} on stdout and exit status 2.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <new>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "bundle.hpp"
#include "noise.hpp"
#include "qk/qk.hpp"
#include "sampler.hpp"
#include "sha256.hpp"
#include "tokenizer.hpp"

using nlohmann::json;

// ------------------------------------------------------------------ allocation counting
// Every operator new in the process (this program, libqk_runtime and ONNX Runtime's C++ code)
// comes here while counting is on.
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long long> g_news{0};
}  // namespace

void* operator new(std::size_t n) {
    if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
    void* p = std::malloc(n ? n : 1);
    if (!p) throw std::bad_alloc();
    return p;
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace {

std::uint32_t bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

json read_json_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw qk::InputError("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return json::parse(ss.str());
}

std::optional<qk::Box> box_of(const json& b) {
    if (b.is_null()) return std::nullopt;
    return qk::Box{b.at(0).get<int>(), b.at(1).get<int>(), b.at(2).get<int>(), b.at(3).get<int>()};
}

qk::Sparse sparse_of(const json& j) {
    std::string s = j.is_string() ? j.get<std::string>() : "auto";
    if (s == "none") return qk::Sparse::None;
    if (s == "region") return qk::Sparse::Region;
    return qk::Sparse::Auto;
}

long long count_news(const std::function<void()>& body) {
    long long before = g_news.load();
    g_counting = true;
    body();
    g_counting = false;
    return g_news.load() - before;
}

int run(int argc, char** argv) {
    if (argc < 2) throw qk::InputError("usage: qk_cpp_probe COMMAND ... (see the source)");
    std::string cmd = argv[1];
    auto arg = [&](int k) -> std::string {
        if (k >= argc) throw qk::InputError(cmd + ": missing argument " + std::to_string(k - 1));
        return argv[k];
    };
    if (cmd == "tokenize") {
        qk::Tokenizer tok = qk::Tokenizer::from_file(arg(2), std::stoi(arg(3)));
        json texts = json::parse(std::cin);
        json out = json::array();
        for (const auto& t : texts) {
            qk::Encoding e = tok.encode(t.get<std::string>());
            out.push_back({{"ids", e.ids}, {"mask", e.attention_mask}, {"truncated", e.truncated}});
        }
        std::cout << out.dump() << "\n";
    } else if (cmd == "noise") {
        std::uint64_t seed = std::stoull(arg(2));
        std::size_t n = std::stoull(arg(3));
        std::vector<float> v(n);
        qk::portable_normal(seed, v.data(), n);
        json out = json::array();
        for (float f : v) out.push_back(bits(f));
        std::cout << out.dump() << "\n";
    } else if (cmd == "sigmas") {
        qk::FlowMatchEuler s(std::stod(arg(3)));
        s.set_timesteps(std::stoi(arg(2)));
        json out = json::array();
        for (float f : s.sigmas()) out.push_back(bits(f));
        std::cout << out.dump() << "\n";
    } else if (cmd == "few_step_sigmas") {
        json out = json::array();
        for (float f : qk::few_step_sigmas(std::stoi(arg(2)))) out.push_back(bits(f));
        std::cout << out.dump() << "\n";
    } else if (cmd == "sha256") {
        json out = json::array();
        for (int k = 2; k < argc; ++k) out.push_back(qk::sha256_file(argv[k]));
        std::cout << out.dump() << "\n";
    } else if (cmd == "png") {
        qk::Image img = qk::load_png(arg(2));
        std::ofstream f(arg(3), std::ios::binary);
        f.write(reinterpret_cast<const char*>(img.rgb.data()), static_cast<std::streamsize>(img.rgb.size()));
        std::cout << json{{"width", img.width}, {"height", img.height}}.dump() << "\n";
    } else if (cmd == "resize") {
        qk::Image img = qk::load_png(arg(2));
        qk::save_png(arg(5), qk::resize_bilinear(img, std::stoi(arg(3)), std::stoi(arg(4))));
        std::cout << "{}\n";
    } else if (cmd == "bundle") {
        qk::Bundle b = qk::open_bundle(arg(2), true);
        json graphs = json::array();
        for (const auto& [name, _] : b.graphs) graphs.push_back(name);
        const qk::Composite& c = b.composite;  // as composite.py Composite.to_dict writes it
        json composite = c.kind == qk::Composite::Kind::Gate
                             ? json{{"kind", "gate"}}
                             : json{{"kind", "changed"}, {"lo", c.lo}, {"hi", c.hi}, {"widen", c.widen}};
        std::cout << json{{"precision", b.precision}, {"sparse_attn", b.sparse_attn}, {"graphs", graphs}, {"sha", b.sha()},
                          {"steps", b.sampler.steps}, {"composite", composite},
                          {"few_step", b.few_step ? json(b.few_step->steps) : json()}, {"weight_only", b.weight_only}}
                         .dump()
                  << "\n";
    } else if (cmd == "edits") {
        qk::SessionOptions so;
        if (argc > 4) so.threads = std::stoi(arg(4));
        qk::Session s(arg(2), so);
        json jobs = read_json_file(arg(3));
        json out = json::array();
        for (const auto& j : jobs) {
            qk::EditOptions o;
            o.seed = j.value("seed", 0ULL);
            o.steps = j.value("steps", 0);
            o.sparse = sparse_of(j.value("sparse", json()));
            qk::Image img = qk::load_png(j.at("image").get<std::string>());
            qk::EditResult r = s.edit(img, j.at("instruction").get<std::string>(), box_of(j.value("box", json())), o);
            qk::save_png(j.at("out").get<std::string>(), r.image);
            out.push_back({{"out", j.at("out")}, {"timings", r.timings}, {"decoder_steps", r.decoder_steps},
                           {"active_tokens", r.active_tokens}, {"gate", r.gate}, {"warnings", r.warnings}});
        }
        std::cout << json{{"open_ms", s.open_ms()}, {"results", out}}.dump() << "\n";
    } else if (cmd == "allocs") {
        // How many operator-new calls one denoising step makes once warmed up, and how many of
        // them ONNX Runtime's Run makes by itself: the difference is what this library adds.
        qk::SessionOptions so;
        if (argc > 4) so.threads = std::stoi(arg(4));
        qk::Session s(arg(2), so);
        qk::Image img = qk::load_png(arg(3));
        const int n1 = 4, n2 = 12, reps = 3;
        qk::EditOptions o1, o2;
        o1.steps = n1;
        o2.steps = n2;
        o1.sparse = o2.sparse = qk::Sparse::None;
        for (int k = 0; k < 2; ++k) s.edit(img, "make it blue", std::nullopt, o2);  // warm up
        long long a1 = 1LL << 60, a2 = 1LL << 60;
        for (int k = 0; k < reps; ++k) {
            a1 = std::min(a1, count_news([&] { s.edit(img, "make it blue", std::nullopt, o1); }));
            a2 = std::min(a2, count_news([&] { s.edit(img, "make it blue", std::nullopt, o2); }));
        }
        double per_step_total = double(a2 - a1) / (n2 - n1);

        // ONNX Runtime alone: the decoder bound once to fixed tensors, run repeatedly
        qk::Bundle b = qk::open_bundle(arg(2), false);
        auto be = qk::make_backend(b, so);
        const qk::GraphInfo& g = b.graph("decoder");
        const std::int64_t nb = qk::edit_branches(b.sampler.image_guidance);  // the edit's guidance branches
        std::vector<qk::Tensor> ts;
        ts.reserve(g.inputs.size() + 1);
        std::vector<qk::Tensor*> in, out;
        for (const auto& spec : g.inputs) {
            std::vector<std::int64_t> shape;
            for (const auto& d : spec.shape) shape.push_back(d.axis.empty() ? d.value : nb);
            ts.emplace_back(spec.name, spec.dtype, shape);
            in.push_back(&ts.back());
        }
        std::vector<std::int64_t> vshape;
        for (const auto& d : g.outputs[0].shape) vshape.push_back(d.axis.empty() ? d.value : nb);
        ts.emplace_back(g.outputs[0].name, qk::DType::F32, vshape);
        out.push_back(&ts.back());
        auto call = be->prepare(g, in, out);
        for (int k = 0; k < 3; ++k) call->run();
        long long ort = 1LL << 60;
        for (int k = 0; k < reps; ++k) ort = std::min(ort, count_news([&] { call->run(); }));
        std::cout << json{{"steps", {n1, n2}},
                          {"news_per_edit", {a1, a2}},
                          {"news_per_step", per_step_total},
                          {"news_per_ort_run", ort},
                          {"news_per_step_by_library", per_step_total - double(ort)}}
                         .dump()
                  << "\n";
    } else {
        throw qk::InputError("unknown command " + cmd);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const qk::Error& e) {
        std::cout << json{{"error", static_cast<int>(e.code())}, {"message", e.what()}}.dump() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cout << json{{"error", 5}, {"message", e.what()}}.dump() << "\n";
        return 2;
    }
}

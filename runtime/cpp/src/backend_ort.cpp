// ONNX Runtime backend (CPU execution provider) through its C++ API, with the Python runtime's
// session options (runtime/backend_ort.py): all graph optimizations, sequential execution,
// `threads` intra-op threads (ONNX Runtime's default when 0), no thread spinning unless asked.
//
// A prepared call wraps the session's tensors around the caller's host buffers once
// (Ort::Value::CreateTensor over existing memory, outputs included), so run() is a single
// Session::Run that reads and writes those buffers in place: nothing is allocated or copied by
// this library per call.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <map>
#include <mutex>
#include <set>

#include "backend.hpp"

namespace qk {
namespace {

void init_ort_api() {
    static std::once_flag once;
    static const OrtApi* api = nullptr;
    std::call_once(once, [] {
        const OrtApiBase* base = OrtGetApiBase();
        api = base ? base->GetApi(ORT_API_VERSION) : nullptr;
        if (api) Ort::InitApi(api);
    });
    if (!api)
        throw BackendError("the ONNX Runtime library loaded here does not provide C API version " +
                           std::to_string(ORT_API_VERSION) + " (it is older than the headers this runtime was built "
                           "with); install onnxruntime >= 1." + std::to_string(ORT_API_VERSION) + " and rebuild");
}

class OrtCall final : public PreparedCall {
public:
    OrtCall(Ort::Session& session, std::string graph) : session_(session), graph_(std::move(graph)) {}
    void add_input(Tensor* t, const Ort::MemoryInfo& mem) {
        in_names_.push_back(t->name.c_str());
        in_values_.push_back(value_of(t, mem));
    }
    void add_output(Tensor* t, const Ort::MemoryInfo& mem) {
        out_names_.push_back(t->name.c_str());
        out_values_.push_back(value_of(t, mem));
    }
    void run() override {
        try {
            session_.Run(run_options_, in_names_.data(), in_values_.data(), in_values_.size(), out_names_.data(),
                         out_values_.data(), out_values_.size());
        } catch (const Ort::Exception& e) {
            throw BackendError("ONNX Runtime failed running graph '" + graph_ + "': " + e.what());
        }
    }

private:
    static Ort::Value value_of(Tensor* t, const Ort::MemoryInfo& mem) {
        if (t->dtype == DType::F32)
            return Ort::Value::CreateTensor<float>(mem, t->f.data(), t->f.size(), t->shape.data(), t->shape.size());
        return Ort::Value::CreateTensor<std::int64_t>(mem, t->i.data(), t->i.size(), t->shape.data(), t->shape.size());
    }
    Ort::Session& session_;
    std::string graph_;
    Ort::RunOptions run_options_;
    std::vector<const char*> in_names_, out_names_;
    std::vector<Ort::Value> in_values_, out_values_;
};

class OrtBackend final : public Backend {
public:
    OrtBackend(const Bundle& bundle, const SessionOptions& options)
        : env_(ORT_LOGGING_LEVEL_ERROR, "qk_runtime"), mem_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
        opts_.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        opts_.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
        if (options.threads > 0) {
            opts_.SetIntraOpNumThreads(options.threads);
            opts_.SetInterOpNumThreads(1);
        }
        opts_.SetLogSeverityLevel(3);
        // weight-only INT8 graphs (Bundle::weight_only, from the manifest): no Q/DQ fusion, so their
        // weights are dequantized once at load, as the Python runtime does
        weight_only_opts_ = opts_.Clone();
        weight_only_opts_.AddConfigEntry("session.disable_quant_qdq", "1");
        weight_only_spin_opts_ = weight_only_opts_.Clone();
        weight_only_opts_.AddConfigEntry("session.intra_op.allow_spinning", "0");
        // idle worker threads sleep instead of spinning (a CPU shared with other work); with
        // options.spinning the denoising loop's graphs spin (kSpinGraphs), the others still sleep
        spin_opts_ = opts_.Clone();
        spin_opts_.AddConfigEntry("session.intra_op.allow_spinning", options.spinning ? "1" : "0");
        weight_only_spin_opts_.AddConfigEntry("session.intra_op.allow_spinning", options.spinning ? "1" : "0");
        opts_.AddConfigEntry("session.intra_op.allow_spinning", "0");
        weight_only_ = bundle.weight_only;
    }

    std::string name() const override { return "ort-cpu"; }

    void load(const GraphInfo& graph) override { session(graph); }

    std::unique_ptr<PreparedCall> prepare(const GraphInfo& graph, const std::vector<Tensor*>& inputs,
                                          const std::vector<Tensor*>& outputs) override {
        Ort::Session& s = session(graph);
        try {
            auto call = std::make_unique<OrtCall>(s, graph.name);
            for (Tensor* t : inputs) call->add_input(t, mem_);
            for (Tensor* t : outputs) call->add_output(t, mem_);
            return call;
        } catch (const Ort::Exception& e) {
            throw BackendError("ONNX Runtime could not bind the tensors of graph '" + graph.name + "': " + e.what());
        }
    }

private:
    Ort::Session& session(const GraphInfo& graph) {
        auto it = sessions_.find(graph.name);
        if (it != sessions_.end()) return it->second;
        Ort::Session s{nullptr};
        try {
            bool spin = false;
            for (const char* g : kSpinGraphs)
                if (graph.name == g) spin = true;
            const bool weight_only = weight_only_.count(graph.name) != 0;
            s = Ort::Session(env_, graph.path.c_str(),
                             weight_only ? (spin ? weight_only_spin_opts_ : weight_only_opts_) : spin ? spin_opts_ : opts_);
        } catch (const Ort::Exception& e) {
            throw BundleError("ONNX Runtime cannot load " + graph.path + " (" + e.what() +
                              "); the bundle is damaged or was written by an incompatible exporter: re-export it");
        }
        // the graph's inputs and outputs must be the ones the manifest (and the contract) names
        Ort::AllocatorWithDefaultOptions alloc;
        std::set<std::string> have_in, have_out, want_in, want_out;
        for (std::size_t k = 0; k < s.GetInputCount(); ++k) have_in.insert(s.GetInputNameAllocated(k, alloc).get());
        for (std::size_t k = 0; k < s.GetOutputCount(); ++k) have_out.insert(s.GetOutputNameAllocated(k, alloc).get());
        for (const auto& t : graph.inputs) want_in.insert(t.name);
        for (const auto& t : graph.outputs) want_out.insert(t.name);
        if (have_in != want_in || have_out != want_out) {
            auto join = [](const std::set<std::string>& v) {
                std::string r;
                for (const auto& x : v) r += (r.empty() ? "" : ", ") + x;
                return r;
            };
            throw BundleError(graph.path + " has inputs [" + join(have_in) + "] and outputs [" + join(have_out) +
                              "], but manifest.json says [" + join(want_in) + "] and [" + join(want_out) + "]; re-export the bundle");
        }
        return sessions_.emplace(graph.name, std::move(s)).first->second;
    }

    Ort::Env env_;
    Ort::SessionOptions opts_, weight_only_opts_{nullptr}, weight_only_spin_opts_{nullptr}, spin_opts_{nullptr};
    std::set<std::string> weight_only_;
    Ort::MemoryInfo mem_;
    std::map<std::string, Ort::Session> sessions_;
};

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const Bundle& bundle, const SessionOptions& options) {
    init_ort_api();
    try {
        return std::make_unique<OrtBackend>(bundle, options);
    } catch (const Ort::Exception& e) {
        throw BackendError(std::string("ONNX Runtime could not start: ") + e.what());
    }
}

}  // namespace qk

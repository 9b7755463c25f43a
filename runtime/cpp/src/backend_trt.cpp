// TensorRT backend (NvInfer, TensorRT 10 / 11 runtime API): runs the engines `qk-build` wrote for
// this bundle and this GPU. Compiled only when CMake finds TensorRT and the CUDA toolkit.
//
// Written against NVIDIA's documented runtime API (createInferRuntime, deserializeCudaEngine,
// getNbIOTensors / getIOTensorName / getTensorIOMode / getTensorDataType, createExecutionContext,
// setInputShape, setTensorAddress, enqueueV3) and checked here only by compiling it against the
// public headers: no machine of this project has TensorRT to run it (see README.md).
//
// The engine folder is the one qk-build wrote (SessionOptions::engine_dir): engines.json holds
// the cache key, which must match this bundle (its files hash and profiles), the TensorRT
// version, the engine precision, the GPU name and its compute capability, exactly as the Python
// TensorRT backend checks it (runtime/engines.py); a mismatch names the qk-build command.
//
// A prepared call owns one device buffer per tensor (allocated once) and one host
// staging buffer where the engine's dtype differs from the host tensor's (int32 ids, half I/O).
// run(): copy inputs host -> device, set shapes and addresses, enqueueV3, copy outputs back,
// synchronise. Nothing is allocated per call.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backend.hpp"

using nlohmann::json;

namespace qk {
namespace {

std::string rebuild(const Bundle& b, const std::string& dir) {
    return "qk-build --bundle " + b.path + " --out " + dir;
}

void cuda_check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) throw BackendError(std::string("CUDA call failed (") + what + "): " + cudaGetErrorString(err));
}

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kERROR) return;
        std::lock_guard<std::mutex> lock(mutex_);
        last_ = msg ? msg : "";
    }
    std::string last() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_;
    }

private:
    std::mutex mutex_;
    std::string last_;
};

std::size_t element_size(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: return 4;
        case nvinfer1::DataType::kHALF: return 2;
        case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kINT64: return 8;
        default: return 0;
    }
}

std::uint16_t float_to_half(float f) {
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    std::uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7FFFFFu;
    int exp = static_cast<int>((x >> 23) & 0xFF) - 127 + 15;
    if (((x >> 23) & 0xFF) == 0xFF) return static_cast<std::uint16_t>(sign | 0x7C00u | (mant ? 0x200u : 0u));
    if (exp >= 31) return static_cast<std::uint16_t>(sign | 0x7C00u);
    if (exp <= 0) {
        if (exp < -10) return static_cast<std::uint16_t>(sign);
        mant |= 0x800000u;
        int shift = 14 - exp;
        std::uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) ++half;
        return static_cast<std::uint16_t>(sign | half);
    }
    std::uint32_t half = (static_cast<std::uint32_t>(exp) << 10) | (mant >> 13);
    std::uint32_t rem = mant & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into the exponent: correct
    return static_cast<std::uint16_t>(sign | half);
}

float half_to_float(std::uint16_t h) {
    std::uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, x;
    if (exp == 0) {
        if (mant == 0) {
            x = sign;
        } else {  // subnormal: normalise
            int e = -1;
            do {
                ++e;
                mant <<= 1;
            } while (!(mant & 0x400u));
            x = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7F800000u | (mant << 13);
    } else {
        x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

struct Engine {
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    std::mutex mutex;  // one context per engine: calls on it are serialised
};

class TrtCall final : public PreparedCall {
public:
    struct Binding {
        Tensor* host = nullptr;
        bool input = true;
        nvinfer1::DataType dtype = nvinfer1::DataType::kFLOAT;
        void* device = nullptr;
        std::size_t device_bytes = 0;
        std::vector<unsigned char> staging;  // host copy in the engine's dtype when it differs
    };

    TrtCall(Engine& e, cudaStream_t stream, std::string graph) : engine_(e), stream_(stream), graph_(std::move(graph)) {}
    ~TrtCall() override {
        for (auto& b : bindings_)
            if (b.device) cudaFree(b.device);
    }

    void add(Tensor* t, bool input) {
        Binding b;
        b.host = t;
        b.input = input;
        b.dtype = engine_.engine->getTensorDataType(t->name.c_str());
        std::size_t es = element_size(b.dtype);
        bool same = (t->dtype == DType::F32 && b.dtype == nvinfer1::DataType::kFLOAT) ||
                    (t->dtype == DType::I64 && b.dtype == nvinfer1::DataType::kINT64);
        bool convertible = (t->dtype == DType::F32 && b.dtype == nvinfer1::DataType::kHALF) ||
                           (t->dtype == DType::I64 && b.dtype == nvinfer1::DataType::kINT32);
        if (!same && !convertible)
            throw BackendError("TensorRT engine '" + graph_ + "' has tensor '" + t->name + "' of an unsupported data type; "
                               "rebuild the engines with qk-build");
        b.device_bytes = t->count() * es;
        if (!same) b.staging.resize(b.device_bytes);
        cuda_check(cudaMalloc(&b.device, b.device_bytes ? b.device_bytes : 1), "cudaMalloc");
        bindings_.push_back(std::move(b));
    }

    void run() override {
        std::lock_guard<std::mutex> lock(engine_.mutex);
        nvinfer1::IExecutionContext& ctx = *engine_.context;
        for (auto& b : bindings_) {
            const char* name = b.host->name.c_str();
            if (b.input) {
                nvinfer1::Dims dims{};
                dims.nbDims = static_cast<std::int32_t>(b.host->shape.size());
                for (std::size_t k = 0; k < b.host->shape.size(); ++k) dims.d[k] = b.host->shape[k];
                if (!ctx.setInputShape(name, dims))
                    throw BackendError("input '" + b.host->name + "' shape " + b.host->shape_str() + " of graph '" + graph_ +
                                       "' is outside the engine's profile; rebuild the engines with qk-build");
                const void* src = b.host->data();
                if (!b.staging.empty()) {
                    stage_in(b);
                    src = b.staging.data();
                }
                cuda_check(cudaMemcpyAsync(b.device, src, b.device_bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
            }
            if (!ctx.setTensorAddress(name, b.device))
                throw BackendError("TensorRT refused the address of tensor '" + b.host->name + "' in graph '" + graph_ + "'");
        }
        if (!ctx.enqueueV3(stream_)) throw BackendError("TensorRT failed to run graph '" + graph_ + "'");
        for (auto& b : bindings_)
            if (!b.input)
                cuda_check(cudaMemcpyAsync(b.staging.empty() ? b.host->data() : b.staging.data(), b.device, b.device_bytes,
                                           cudaMemcpyDeviceToHost, stream_),
                           "copy to host");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        for (auto& b : bindings_)
            if (!b.input && !b.staging.empty()) stage_out(b);
    }

private:
    static void stage_in(Binding& b) {
        std::size_t n = b.host->count();
        if (b.dtype == nvinfer1::DataType::kHALF) {
            auto* dst = reinterpret_cast<std::uint16_t*>(b.staging.data());
            for (std::size_t k = 0; k < n; ++k) dst[k] = float_to_half(b.host->f[k]);
        } else {  // int64 -> int32
            auto* dst = reinterpret_cast<std::int32_t*>(b.staging.data());
            for (std::size_t k = 0; k < n; ++k) dst[k] = static_cast<std::int32_t>(b.host->i[k]);
        }
    }
    static void stage_out(Binding& b) {
        std::size_t n = b.host->count();
        if (b.dtype == nvinfer1::DataType::kHALF) {
            const auto* src = reinterpret_cast<const std::uint16_t*>(b.staging.data());
            for (std::size_t k = 0; k < n; ++k) b.host->f[k] = half_to_float(src[k]);
        } else {
            const auto* src = reinterpret_cast<const std::int32_t*>(b.staging.data());
            for (std::size_t k = 0; k < n; ++k) b.host->i[k] = src[k];
        }
    }

    Engine& engine_;
    cudaStream_t stream_;
    std::string graph_;
    std::vector<Binding> bindings_;
};

class TrtBackend final : public Backend {
public:
    TrtBackend(const Bundle& bundle, const SessionOptions& options) : bundle_(bundle), dir_(options.engine_dir) {
        if (dir_.empty())
            throw BackendError("the tensorrt backend needs the engines folder (SessionOptions::engine_dir, --engine-dir): "
                               "build engines with: qk-build --bundle " + bundle.path + " --out DIR");
        std::ifstream in(dir_ + "/engines.json");
        if (!in)
            throw BackendError("no TensorRT engines in " + dir_ + " (engines.json is missing); build them with: " + rebuild(bundle, dir_));
        std::stringstream ss;
        ss << in.rdbuf();
        try {
            index_ = json::parse(ss.str());
        } catch (const json::exception& e) {
            throw BackendError(dir_ + "/engines.json is not valid JSON (" + e.what() + "); rebuild the engines with qk-build");
        }
        if (!index_.is_object() || index_.value("format", "") != "qk-engines" || !index_.contains("engines") ||
            !index_["engines"].is_object())
            throw BackendError(dir_ + "/engines.json is not an engines file written by qk-build; rebuild the engines");
        int device = 0;
        cuda_check(cudaGetDevice(&device), "cudaGetDevice");
        cudaDeviceProp props{};
        cuda_check(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
        check_key(props.name, std::to_string(props.major) + "." + std::to_string(props.minor));
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw BackendError("TensorRT could not create its runtime: " + logger_.last());
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }
    ~TrtBackend() override {
        engines_.clear();
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::string name() const override { return "tensorrt"; }

    void load(const GraphInfo& graph) override { engine(graph); }

    std::unique_ptr<PreparedCall> prepare(const GraphInfo& graph, const std::vector<Tensor*>& inputs,
                                          const std::vector<Tensor*>& outputs) override {
        Engine& e = engine(graph);
        auto call = std::make_unique<TrtCall>(e, stream_, graph.name);
        for (Tensor* t : inputs) call->add(t, true);
        for (Tensor* t : outputs) call->add(t, false);
        return call;
    }

private:
    void check_key(const std::string& gpu, const std::string& cc) {
        const json& key = index_.value("key", json::object());
        json profiles = json::object();
        for (const auto& [name, g] : bundle_.graphs) profiles[name] = g.profile;
        std::string version = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                              std::to_string(NV_TENSORRT_PATCH);
        std::string precision = bundle_.precision == "int8"   ? "int8-qdq-strongly-typed"
                                : bundle_.precision == "fp16" ? "fp16-strongly-typed"
                                : NV_TENSORRT_MAJOR < 11      ? "fp16"
                                                              : "fp32-strongly-typed";
        std::vector<std::string> diffs;
        auto field = [&](const char* k, const json& want) {
            const json& have = key.value(k, json());
            if (have != want) diffs.push_back(std::string(k) + ": built for " + have.dump() + ", now " + want.dump());
        };
        field("bundle_sha", bundle_.sha());
        field("precision", precision);
        field("profiles", profiles);
        field("gpu", gpu);
        field("compute_capability", cc);
        std::string trt = key.value("tensorrt", json("")).is_string() ? key.value("tensorrt", std::string()) : "";
        if (trt != version && trt.rfind(version + ".", 0) != 0)
            diffs.push_back("tensorrt: built for " + trt + ", now " + version);
        if (!diffs.empty()) {
            std::string detail;
            for (const auto& d : diffs) detail += (detail.empty() ? "" : "; ") + d;
            throw BackendError("the TensorRT engines in " + dir_ + " do not match this bundle and machine (" + detail +
                               "); rebuild them with: " + rebuild(bundle_, dir_));
        }
    }

    Engine& engine(const GraphInfo& graph) {
        auto it = engines_.find(graph.name);
        if (it != engines_.end()) return *it->second;
        std::string plan = dir_ + "/" + index_["engines"].value(graph.name, graph.name + ".plan");
        std::ifstream in(plan, std::ios::binary);
        if (!in) throw BackendError("engine " + plan + " is missing; rebuild with: " + rebuild(bundle_, dir_));
        std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        auto e = std::make_unique<Engine>();
        e->engine.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!e->engine)
            throw BackendError("TensorRT could not deserialize " + plan + " (" + logger_.last() + "); rebuild the engines with qk-build");
        // the engine's inputs and outputs must be the graph's
        std::map<std::string, bool> io;
        for (std::int32_t k = 0; k < e->engine->getNbIOTensors(); ++k) {
            const char* n = e->engine->getIOTensorName(k);
            io[n] = e->engine->getTensorIOMode(n) == nvinfer1::TensorIOMode::kINPUT;
        }
        for (const auto& t : graph.inputs)
            if (!io.count(t.name) || !io[t.name])
                throw BackendError("engine " + plan + " has no input '" + t.name + "'; rebuild with: " + rebuild(bundle_, dir_));
        for (const auto& t : graph.outputs)
            if (!io.count(t.name) || io[t.name])
                throw BackendError("engine " + plan + " has no output '" + t.name + "'; rebuild with: " + rebuild(bundle_, dir_));
        e->context.reset(e->engine->createExecutionContext());
        if (!e->context) throw BackendError("TensorRT could not create an execution context for " + plan + ": " + logger_.last());
        return *engines_.emplace(graph.name, std::move(e)).first->second;
    }

    const Bundle& bundle_;
    std::string dir_;
    json index_;
    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, std::unique_ptr<Engine>> engines_;
};

}  // namespace

std::unique_ptr<Backend> make_trt_backend(const Bundle& bundle, const SessionOptions& options) {
    return std::make_unique<TrtBackend>(bundle, options);
}

}  // namespace qk

// Backends run a bundle's graphs on host tensors. A graph is `prepare`d once with the tensors it
// reads and writes (their buffers stay put; only their contents change), then `run` as often as
// needed: the denoising loop calls run() on the same prepared call every step, so the library
// allocates nothing per step. Backends: ONNX Runtime (CPU provider), TensorRT (when built with it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "qk/qk.hpp"
#include "tensor.hpp"

namespace qk {

class PreparedCall {
public:
    virtual ~PreparedCall() = default;
    virtual void run() = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    // Load a graph now (so that its cost is paid at open, not at the first edit).
    virtual void load(const GraphInfo& graph) = 0;
    // `inputs` / `outputs` in any order; their names must be the graph's. They must outlive the call.
    virtual std::unique_ptr<PreparedCall> prepare(const GraphInfo& graph, const std::vector<Tensor*>& inputs,
                                                  const std::vector<Tensor*>& outputs) = 0;
};

// Throws BackendError for an unknown or unavailable backend (naming the choices and the fix).
std::unique_ptr<Backend> make_backend(const Bundle& bundle, const SessionOptions& options);

std::unique_ptr<Backend> make_ort_backend(const Bundle& bundle, const SessionOptions& options);
#ifdef QK_HAVE_TENSORRT
std::unique_ptr<Backend> make_trt_backend(const Bundle& bundle, const SessionOptions& options);
#endif

}  // namespace qk

#include "backend.hpp"

namespace qk {

std::unique_ptr<Backend> make_backend(const Bundle& bundle, const SessionOptions& options) {
    const std::string& b = options.backend;
    if (b == "ort-cpu" || b == "ort" || b == "onnxruntime" || b.empty()) return make_ort_backend(bundle, options);
    if (b == "tensorrt" || b == "trt") {
#ifdef QK_HAVE_TENSORRT
        return make_trt_backend(bundle, options);
#else
        throw BackendError("backend 'tensorrt' is not built into this library: CMake did not find TensorRT when it was "
                           "configured. Install TensorRT and the CUDA toolkit and rebuild with -DTensorRT_ROOT=DIR, or "
                           "use backend 'ort-cpu'");
#endif
    }
    throw BackendError("backend '" + b + "' is unknown; choose 'ort-cpu'" +
#ifdef QK_HAVE_TENSORRT
                       std::string(" or 'tensorrt'")
#else
                       std::string(" ('tensorrt' needs a build with TensorRT)")
#endif
    );
}

}  // namespace qk

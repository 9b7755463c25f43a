#include "tensor.hpp"

namespace qk {

const char* dtype_name(DType t) { return t == DType::F32 ? "float32" : "int64"; }

Tensor::Tensor(std::string name_, DType dtype_, std::vector<std::int64_t> shape_)
    : name(std::move(name_)), dtype(dtype_), shape(std::move(shape_)) {
    if (dtype == DType::F32)
        f.assign(count(), 0.0f);
    else
        i.assign(count(), 0);
}

std::size_t Tensor::count() const {
    std::size_t n = 1;
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    return n;
}

std::size_t Tensor::bytes() const { return count() * (dtype == DType::F32 ? sizeof(float) : sizeof(std::int64_t)); }
void* Tensor::data() { return dtype == DType::F32 ? static_cast<void*>(f.data()) : static_cast<void*>(i.data()); }
const void* Tensor::data() const {
    return dtype == DType::F32 ? static_cast<const void*>(f.data()) : static_cast<const void*>(i.data());
}

std::string Tensor::shape_str() const {
    std::string s = "(";
    for (std::size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
    return s + ")";
}

}  // namespace qk

// Host tensors: named, shaped float32 or int64 buffers that the session allocates once and the
// backends bind once (their addresses must not change while a prepared call uses them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qk {

enum class DType { F32, I64 };

const char* dtype_name(DType t);

struct Tensor {
    std::string name;
    DType dtype = DType::F32;
    std::vector<std::int64_t> shape;
    std::vector<float> f;         // used when dtype == F32
    std::vector<std::int64_t> i;  // used when dtype == I64

    Tensor() = default;
    Tensor(std::string name_, DType dtype_, std::vector<std::int64_t> shape_);
    std::size_t count() const;
    std::size_t bytes() const;
    void* data();
    const void* data() const;
    std::string shape_str() const;
};

}  // namespace qk

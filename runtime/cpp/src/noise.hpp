// The portable initial noise shared by every runtime (runtime/noise.py has the specification):
// SplitMix64 -> uniform doubles -> Box-Muller in double precision -> float32, C order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qk {

// The i-th output (i from 1) of SplitMix64 seeded with `seed` is splitmix64_at(seed, i).
std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t i);
// Fill out[0..count) with the standard normal values of `seed`.
void portable_normal(std::uint64_t seed, float* out, std::size_t count);

}  // namespace qk

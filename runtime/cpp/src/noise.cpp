#include "noise.hpp"

#include <cmath>

namespace qk {

static std::uint64_t mix(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

std::uint64_t splitmix64_at(std::uint64_t seed, std::uint64_t i) { return mix(seed + 0x9E3779B97F4A7C15ULL * i); }

void portable_normal(std::uint64_t seed, float* out, std::size_t count) {
    const double two_pi = 2.0 * 3.141592653589793;  // 2 * np.pi, in double
    const double scale = 1.0 / 9007199254740992.0;   // 2^-53
    std::uint64_t state = seed;
    for (std::size_t k = 0; k < count; k += 2) {
        state += 0x9E3779B97F4A7C15ULL;
        double u1 = double(mix(state) >> 11) * scale;
        state += 0x9E3779B97F4A7C15ULL;
        double u2 = double(mix(state) >> 11) * scale;
        double r = std::sqrt(-2.0 * std::log1p(-u1));
        double theta = two_pi * u2;
        out[k] = float(r * std::cos(theta));
        if (k + 1 < count) out[k + 1] = float(r * std::sin(theta));
    }
}

}  // namespace qk

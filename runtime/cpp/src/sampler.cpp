#include "sampler.hpp"

#include <stdexcept>

namespace qk {

FlowMatchEuler::FlowMatchEuler(double shift, int num_train_timesteps) : shift_(shift), T_(num_train_timesteps) {
    if (T_ < 1 || !(shift > 0)) throw std::invalid_argument("FlowMatchEuler: need num_train_timesteps >= 1 and shift > 0");
    // training sigmas in float32: linspace(1, T, T)[::-1] / T, shifted (numpy casts the Python
    // float shift to float32 in these operations); only the first and last are needed
    const float Tf = static_cast<float>(T_), sh = static_cast<float>(shift_), sh1 = static_cast<float>(shift_ - 1.0);
    auto shifted = [&](float s) { return (sh * s) / (1.0f + sh1 * s); };
    sigma_max_ = static_cast<double>(shifted(Tf / Tf));
    sigma_min_ = static_cast<double>(shifted(1.0f / Tf));
}

void FlowMatchEuler::set_timesteps(int steps) {
    if (steps < 1) throw std::invalid_argument("set_timesteps: steps must be >= 1");
    const double T = static_cast<double>(T_);
    const double start = sigma_max_ * T, stop = sigma_min_ * T;
    sigmas_.assign(static_cast<std::size_t>(steps) + 1, 0.0f);
    const int div = steps - 1;
    const double step = div > 0 ? (stop - start) / div : 0.0;
    for (int i = 0; i < steps; ++i) {
        // numpy.linspace: i * step + start, with the endpoint set exactly
        double t = div > 0 ? (i == div ? stop : static_cast<double>(i) * step + start) : start;
        double s = t / T;
        s = shift_ * s / (1.0 + (shift_ - 1.0) * s);
        sigmas_[static_cast<std::size_t>(i)] = static_cast<float>(s);
    }
    sigmas_[static_cast<std::size_t>(steps)] = 0.0f;
    steps_ = steps;
}

void FlowMatchEuler::set_sigmas(const std::vector<float>& sigmas) {
    bool ok = sigmas.size() >= 2 && sigmas.back() == 0.0f;
    for (std::size_t k = 1; ok && k < sigmas.size(); ++k) ok = sigmas[k] < sigmas[k - 1];
    if (!ok) throw std::invalid_argument("set_sigmas: need a decreasing schedule of at least 2 values ending with 0");
    sigmas_ = sigmas;
    steps_ = static_cast<int>(sigmas.size()) - 1;
}

std::vector<float> few_step_sigmas(int steps) {
    if (steps < 1) throw std::invalid_argument("few_step_sigmas: steps must be >= 1");
    std::vector<float> s(static_cast<std::size_t>(steps) + 1);
    for (int k = 0; k <= steps; ++k) s[static_cast<std::size_t>(k)] = static_cast<float>(static_cast<double>(steps - k) / steps);
    return s;
}

void FlowMatchEuler::step(int i, const float* v, float* x, std::size_t n) const {
    const float dt = sigmas_[static_cast<std::size_t>(i) + 1] - sigmas_[static_cast<std::size_t>(i)];
    for (std::size_t k = 0; k < n; ++k) x[k] = x[k] + dt * v[k];
}

}  // namespace qk

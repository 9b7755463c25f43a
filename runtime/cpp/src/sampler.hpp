// Flow-matching Euler sampling, as runtime/sampler.py (diffusers' FlowMatchEulerDiscreteScheduler
// with a static shift): the same sigmas to the last bit, computed with the same dtypes.
#pragma once

#include <cstddef>
#include <vector>

namespace qk {

class FlowMatchEuler {
public:
    explicit FlowMatchEuler(double shift = 1.0, int num_train_timesteps = 1000);
    void set_timesteps(int steps);
    // run the given schedule as is (no shift): steps + 1 values, decreasing, ending with 0; e.g.
    // few_step_sigmas(n) (runtime/sampler.py set_sigmas)
    void set_sigmas(const std::vector<float>& sigmas);
    int steps() const { return steps_; }
    // the noise level of step i (0-based); sigma(steps) is 0
    float sigma(int i) const { return sigmas_[static_cast<std::size_t>(i)]; }
    const std::vector<float>& sigmas() const { return sigmas_; }
    // sigma(i) - sigma(i + 1) in float32: a few-step decoder's `step_size` at step i
    float step_size(int i) const { return sigmas_[static_cast<std::size_t>(i)] - sigmas_[static_cast<std::size_t>(i) + 1]; }
    // x <- x + (sigma(i + 1) - sigma(i)) * v, in float32
    void step(int i, const float* v, float* x, std::size_t n) const;

private:
    double shift_;
    int T_;
    double sigma_max_ = 1.0, sigma_min_ = 0.001;
    int steps_ = 0;
    std::vector<float> sigmas_;
};

// The uniform schedule of an n-step few-step sampler (bundle format 5): (n - k) / n for k = 0..n,
// computed in double and rounded to float (runtime/sampler.py few_step_sigmas).
std::vector<float> few_step_sigmas(int steps);

// Guidance branches an edit runs: 3 (text+image, image only, neither), or 2 where image guidance
// is exactly 1 and the third one's weight is 0 (qk_runtime.sampler.edit_branches).
inline int edit_branches(double image_guidance) { return image_guidance == 1.0 ? 2 : 3; }

}  // namespace qk

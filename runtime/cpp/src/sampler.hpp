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
    int steps() const { return steps_; }
    // the noise level of step i (0-based); sigma(steps) is 0
    float sigma(int i) const { return sigmas_[static_cast<std::size_t>(i)]; }
    const std::vector<float>& sigmas() const { return sigmas_; }
    // x <- x + (sigma(i + 1) - sigma(i)) * v, in float32
    void step(int i, const float* v, float* x, std::size_t n) const;

private:
    double shift_;
    int T_;
    double sigma_max_ = 1.0, sigma_min_ = 0.001;
    int steps_ = 0;
    std::vector<float> sigmas_;
};

// Guidance branches an edit runs: 3 (text+image, image only, neither), or 2 where image guidance
// is exactly 1 and the third one's weight is 0 (qk_runtime.sampler.edit_branches).
inline int edit_branches(double image_guidance) { return image_guidance == 1.0 ? 2 : 3; }

}  // namespace qk

"""Flow-matching Euler sampling in numpy, with the `set_timesteps` / `step` contract of diffusers'
`FlowMatchEulerDiscreteScheduler` (static shift, no dynamic shifting, no Karras/beta sigmas).

The schedule is computed the way diffusers computes it, dtype for dtype, so the sigmas are equal
to the last bit: the training sigmas are float32 `linspace(1, T, T)[::-1] / T`; inference runs
`linspace(sigma_max * T, sigma_min * T, steps)` in float64, divides by T, applies the shift, rounds
to float32 and appends a final 0. A step is `x + (sigma_next - sigma) * v` in float32.

Conventions: x_t = sigma * noise + (1 - sigma) * x_0; the model predicts v = noise - x_0.

Few-step sampling (bundles with a `few_step` manifest entry, format 5): at the step counts it
lists, `set_sigmas(few_step_sigmas(n))` replaces the schedule by the uniform one the shortcut
model was trained on, sigma_k = (n - k) / n (no shift), and each step feeds the decoders
step_size = sigma - sigma_next (`step_size`), in float32.
"""
from __future__ import annotations

import numpy as np


class FlowMatchEulerScheduler:
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.num_train_timesteps = num_train_timesteps
        self.shift = float(shift)
        T = num_train_timesteps
        train = np.linspace(1, T, T, dtype=np.float32)[::-1] / np.float32(T)  # float32, like diffusers
        train = (self.shift * train / (1 + (self.shift - 1) * train)).astype(np.float32)
        self.sigma_max = float(train[0])
        self.sigma_min = float(train[-1])
        self.sigmas = np.zeros(0, np.float32)
        self.timesteps = np.zeros(0, np.float32)
        self.num_inference_steps = 0
        self.step_index = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        steps = int(num_inference_steps)
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        T = self.num_train_timesteps
        t = np.linspace(self.sigma_max * T, self.sigma_min * T, steps)  # float64
        s = t / T
        s = self.shift * s / (1 + (self.shift - 1) * s)
        s = s.astype(np.float32)
        self.timesteps = (s * np.float32(T)).astype(np.float32)
        self.sigmas = np.concatenate([s, np.zeros(1, np.float32)])  # (steps + 1,), last is 0
        self.num_inference_steps = steps
        self.step_index = 0

    def set_sigmas(self, sigmas: np.ndarray) -> None:
        """Run the given schedule as is (no shift): `sigmas` (steps + 1,), decreasing, ending with 0;
        e.g. `few_step_sigmas(n)`."""
        s = np.asarray(sigmas, np.float32)
        if s.ndim != 1 or s.size < 2 or s[-1] != 0 or not np.all(np.diff(s) < 0):
            raise ValueError(f"sigmas must be a decreasing 1-D schedule of at least 2 values ending with 0, got {sigmas!r}")
        self.sigmas = s.copy()
        self.timesteps = (s[:-1] * np.float32(self.num_train_timesteps)).astype(np.float32)
        self.num_inference_steps = s.size - 1
        self.step_index = 0

    @property
    def sigma(self) -> np.float32:
        """The noise level of the step about to be taken."""
        return self.sigmas[self.step_index]

    @property
    def step_size(self) -> np.float32:
        """sigma - sigma_next of the step about to be taken (float32): a few-step decoder's `step_size`."""
        return self.sigmas[self.step_index] - self.sigmas[self.step_index + 1]

    def step(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """One Euler step from the current sigma to the next; returns the new sample (float32)."""
        if self.step_index >= self.num_inference_steps:
            raise RuntimeError(
                f"step() called {self.step_index + 1} times after set_timesteps({self.num_inference_steps}); "
                "call set_timesteps again to start a new run"
            )
        dt = self.sigmas[self.step_index + 1] - self.sigmas[self.step_index]  # float32
        prev = sample.astype(np.float32, copy=False) + dt * model_output.astype(np.float32, copy=False)
        self.step_index += 1
        return prev


def few_step_sigmas(steps: int) -> np.ndarray:
    """The uniform schedule of an n-step few-step sampler: (n - k) / n for k = 0..n, computed in
    float64 and rounded to float32 ((n + 1,), from 1 to 0; exact for powers of two)."""
    n = int(steps)
    if n < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return (np.arange(n, -1, -1, dtype=np.float64) / n).astype(np.float32)


def edit_branches(image_guidance: float) -> int:
    """Guidance branches an edit runs: 3 (text+image, image only, neither), or 2 where image
    guidance is exactly 1 and the third one's weight is 0 (every runtime and the torch pipeline)."""
    return 2 if image_guidance == 1.0 else 3

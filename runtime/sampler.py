"""Flow-matching Euler sampling in numpy, with the `set_timesteps` / `step` contract of diffusers'
`FlowMatchEulerDiscreteScheduler` (static shift, no dynamic shifting, no Karras/beta sigmas).

The schedule is computed the way diffusers computes it, dtype for dtype, so the sigmas are equal
to the last bit: the training sigmas are float32 `linspace(1, T, T)[::-1] / T`; inference runs
`linspace(sigma_max * T, sigma_min * T, steps)` in float64, divides by T, applies the shift, rounds
to float32 and appends a final 0. A step is `x + (sigma_next - sigma) * v` in float32.

Conventions: x_t = sigma * noise + (1 - sigma) * x_0; the model predicts v = noise - x_0.
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

    @property
    def sigma(self) -> np.float32:
        """The noise level of the step about to be taken."""
        return self.sigmas[self.step_index]

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


def edit_branches(image_guidance: float) -> int:
    """Guidance branches an edit runs: 3 (text+image, image only, neither), or 2 where image
    guidance is exactly 1 and the third one's weight is 0 (every runtime and the torch pipeline)."""
    return 2 if image_guidance == 1.0 else 3

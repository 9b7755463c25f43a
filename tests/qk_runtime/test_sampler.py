import numpy as np
import pytest

from qk_runtime.sampler import FlowMatchEulerScheduler


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_schedule_equals_diffusers_bit_for_bit(steps, shift):
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the train extra) is the reference")
    ours = FlowMatchEulerScheduler(shift=shift)
    ours.set_timesteps(steps)
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    assert ours.sigmas.dtype == np.float32 and ours.sigmas.shape == (steps + 1,)
    assert np.array_equal(ours.sigmas, ref.sigmas.numpy())
    assert np.array_equal(ours.timesteps, ref.timesteps.numpy())


def test_default_schedule_is_linspace_from_1_to_1_over_1000_then_0():
    s = FlowMatchEulerScheduler()
    s.set_timesteps(20)
    assert s.sigmas[0] == 1.0 and s.sigmas[-1] == 0.0
    assert s.sigmas[-2] == np.float32(0.001)
    np.testing.assert_allclose(s.sigmas[:-1], np.linspace(1.0, 0.001, 20), rtol=1e-6)


def test_steps_equal_diffusers_step():
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the train extra) is the reference")
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    ours = FlowMatchEulerScheduler()
    ours.set_timesteps(5)
    ref = diffusers.FlowMatchEulerDiscreteScheduler()
    ref.set_timesteps(5)
    xr = torch.from_numpy(x.copy())
    for t in ref.timesteps:
        v = rng.standard_normal(x.shape).astype(np.float32)
        x = ours.step(v, x)
        xr = ref.step(torch.from_numpy(v), t, xr).prev_sample
        assert np.array_equal(x, xr.numpy())
    with pytest.raises(RuntimeError, match="set_timesteps"):
        ours.step(v, x)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowMatchEulerScheduler().set_timesteps(0)
    with pytest.raises(ValueError, match="shift"):
        FlowMatchEulerScheduler(shift=0.0)

"""The training tests' own fixture, beside tests/conftest.py's (tiny_run, one_thread)."""
import pytest


@pytest.fixture(scope="session")
def fixed_loss():
    """loss(model, cfg): the model's joint loss on one fixed batch with fixed noise (is training working?)."""
    import torch

    from qk_train.train import make_batch

    def loss(model, cfg) -> float:
        batch = make_batch(cfg, "main", 10_000, 0, 1, size=32)
        with torch.no_grad():
            value, _ = model.loss(batch, torch.Generator().manual_seed(123))
        return float(value)

    return loss

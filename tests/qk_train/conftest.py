import pytest

from qk_train.train import Trainer, resolve_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny preset trained once (30 steps); returns its run folder."""
    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(resolve_config("tiny", [], None), out, progress=False).run()
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: many times faster than two on a busy 2-core machine; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

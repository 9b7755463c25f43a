import pytest

from qk_train.train import Trainer, resolve_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny preset trained once (30 steps); returns its run folder."""
    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(resolve_config("tiny", [], None), out, progress=False).run()
    return out

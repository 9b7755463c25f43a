"""FD-SW: the shipped ShapeWorld classifier, the Frechet distance, and the `fd` entry of qk-eval."""
import json

import numpy as np
import pytest
import torch

from qk_train.eval import fd
from qk_train.eval.evaluate import main as qk_eval
from qk_train.train import Trainer, resolve_config


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for this module


@pytest.fixture(scope="module")
def scorer():
    return fd.FDSW()


def test_the_shipped_classifier_separates_shapeworld_classes_on_fresh_test_scenes(scorer):
    info = scorer.info
    stated = info["test_accuracy"]
    assert info["metric"].startswith("FD-SW") and "not Inception FID" in info["metric"]
    assert (fd.DEFAULT_WEIGHTS.stat().st_size < 2 * 1024 * 1024) and info["config"]["feature_dim"] == 128
    # test-split scenes never used for the stated figure (that used scenes 0..1999)
    x, y = fd.build_dataset("test", 300_000, 300)
    acc = fd.accuracy(scorer.model, x, y)
    for head, chance in fd.CHANCE.items():
        assert acc[head] >= chance + 0.5 * (1 - chance), (head, acc[head], chance)  # half-way from chance to perfect, at least
        assert acc[head] >= stated[head] - 0.06, (head, acc[head], stated[head])  # and near the stated figure
    assert acc["presence"] >= 0.95


def test_frechet_distance_matches_closed_forms():
    # 1-D: (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2)
    assert fd.frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(1 + 1 + 4 - 4)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    s1 = a @ a.T + np.eye(6)
    assert fd.frechet_distance(np.ones(6), s1, np.ones(6), s1) == pytest.approx(0.0, abs=1e-8)
    # commuting (diagonal) covariances: sum of (sqrt(d1) - sqrt(d2))^2
    d1, d2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    want = float(((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()) + 9.0
    mu2 = np.array([3.0, 0, 0, 0, 0, 0])  # |mu1 - mu2|^2 = 9
    assert fd.frechet_distance(np.zeros(6), np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want)
    with pytest.raises(ValueError, match="at least 2"):
        fd.gaussian_stats(np.zeros((1, 4)))


def test_real_vs_real_is_far_below_real_vs_shuffled_pixels_and_noise(scorer):
    side, n = 64, 200
    real_a = fd.real_images("test", 0, n, side)
    real_b = fd.real_images("test", n, n, side)  # disjoint scenes
    rng = np.random.default_rng(0)
    shuffled = np.stack([img.reshape(-1, 3)[rng.permutation(side * side)].reshape(side, side, 3) for img in real_b])
    noise = rng.integers(0, 256, size=real_b.shape, dtype=np.uint8)
    same = scorer.distance(real_a, real_b)
    assert same * 5 < scorer.distance(real_a, shuffled)
    assert same * 5 < scorer.distance(real_a, noise)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("fd_tiny")
    return Trainer(resolve_config("tiny", [], 2), out, progress=False).run()


def test_qk_eval_reports_fd_sw_and_says_why_there_is_no_true_fid(tiny_model, tmp_path):
    out = tmp_path / "r.json"
    assert qk_eval(["--model", str(tiny_model), "--n", "1", "--gen-n", "4", "--steps", "1", "--box-only", "--json", str(out),
                    "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert {"edit_success", "drift", "inside_error", "gen_accuracy"} <= set(r)  # the existing keys stay
    f = r["fd"]
    assert f["metric"] == fd.METRIC_NAME and f["n"] == 4 and f["value"] > 0 and f["real_vs_real"] > 0
    assert f["classifier"]["sha256"] == fd.load_classifier()[1]["sha256"]
    assert f["inception_fid"]["computed"] is False and "--inception" in f["inception_fid"]["reason"]


def test_inception_flag_fails_early_and_clearly(tiny_model, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert qk_eval(["--model", str(tiny_model), "--inception", str(tmp_path / "nope.pth"), "--json", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err and not out.exists()
    weights = tmp_path / "inception.safetensors"
    weights.write_bytes(b"not read before torchvision is found")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert qk_eval(["--model", str(tiny_model), "--inception", str(weights), "--json", str(out)]) == 2
        assert "pip install torchvision" in capsys.readouterr().err and not out.exists()


def test_true_fid_with_local_inception_weights(tmp_path):
    tv = pytest.importorskip("torchvision", reason="true FID builds Inception-v3 with torchvision, which is not installed here")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = tv.models.inception_v3(weights=None, aux_logits=False, init_weights=True, num_classes=1008)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    gen = list(fd.real_images("test", 500, 4, 32))
    report = fd.fd_report(gen, split="test", side=32, inception=path)
    assert report["inception_fid"]["computed"] is True and report["inception_fid"]["value"] >= 0

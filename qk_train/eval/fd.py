"""FD-SW: a Frechet distance on the features of a small ShapeWorld classifier (not Inception FID).

FID compares two image sets through the statistics of Inception-v3 features. Inception's
weights cannot be downloaded on these machines, and an ImageNet network is a poor judge of flat
synthetic shapes anyway, so this package trains and ships its own feature network: a small CNN
that reads a ShapeWorld image and predicts, for each cell of the 3x3 position grid, whether an
object's centre lies there and that object's colour, shape and size, plus the background and the
object count. Its 128 penultimate features (after the last ReLU, before the heads) play the part
of Inception's pool3 features. Figures computed with it are called **FD-SW (ShapeWorld
classifier features), not Inception FID**; they are comparable with each other (same
classifier, same number of images), never with published FIDs.

    python -m qk_train.eval.fd train                   # retrain the shipped classifier (minutes, 2 cores)
    python -m qk_train.eval.fd accuracy --n 2000       # its accuracy on a fresh test-split sample

The classifier sees every image at 32 x 32 (area-averaged from the image's own side), so one
network scores the `tiny` (32 px), `small` (64 px) and `base` (128 px) presets; it is trained on
train-split scenes rendered at 32, 64 and 128 px in equal shares. The shipped weights are
`fd_classifier.safetensors` beside this file, its configuration, training command and test
accuracy `fd_classifier.json`.

Frechet distance between Gaussians N(mu1, S1) and N(mu2, S2) fitted to two feature sets:
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)),
with tr((S1 S2)^(1/2)) computed as the sum of square roots of the eigenvalues of the symmetric
matrix S1^(1/2) S2 S1^(1/2) (same spectrum as S1 S2, and numerically tame). Like FID it is
biased upwards for small samples, so `qk-eval` also reports the FD-SW of two disjoint real samples
of the same size (`real_vs_real`): the floor a perfect generator would reach at that size.

True FID: `qk-eval --inception PATH` with a local Inception-v3 state dict (torchvision's
`inception_v3` layout: torchvision's ImageNet weights, or pytorch-fid's `pt_inception-*.pth`,
which has the same parameter names and 1008 classes), as safetensors or a .pth loaded with
`torch.load(weights_only=True)`. The network is built with torchvision (needed for this only),
fed 299 x 299 bilinear-resized images in [-1, 1], and its 2048 pool features are compared.
torchvision's blocks differ from the TensorFlow graph that defines the reference FID in two
pooling details, so with pytorch-fid's weights the value is close to, not bit-equal with,
pytorch-fid's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.shapeworld import (BACKGROUNDS, MAX_OBJECTS, PALETTE, POSITIONS, SHAPES, SIZES, make_generation, make_scene,
                               position_name, render)

METRIC_NAME = "FD-SW (ShapeWorld classifier features), not Inception FID"
HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = HERE / "fd_classifier.safetensors"
INPUT_SIDE = 32  # the classifier's input side; every image is area-averaged to it
TRAIN_SIDES = (32, 64, 128)  # train-split scenes are rendered at these sides in turn
CELLS = 9
COLOURS = tuple(PALETTE)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
IGNORE = -100  # label of an attribute of an empty cell

# head layout: per cell [presence 2 | colour 8 | shape 4 | size 2], then background 4, count 4
_CELL_SIZES = (2, len(COLOURS), len(SHAPES), len(SIZES))
_CELL_WIDTH = sum(_CELL_SIZES)
HEAD_WIDTH = CELLS * _CELL_WIDTH + len(BACKGROUND_NAMES) + MAX_OBJECTS
LABEL_WIDTH = CELLS * 4 + 2  # per cell presence, colour, shape, size; then background, count - 1


class ClassifierError(ValueError):
    """The shipped classifier is missing or does not match this code."""


# --------------------------------------------------------------------------- the network


class ShapeWorldClassifier(nn.Module):
    """Three conv stages (two 3x3 convs + BatchNorm + ReLU, then 2x2 max-pool): 32 -> 4 px;
    a linear layer to `feature_dim` features (+ ReLU); one linear layer to every head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), feature_dim: int = 128):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = []
        c_in = 3
        for w in self.widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = w
        self.trunk = nn.Sequential(*layers)
        side = INPUT_SIDE // 2 ** len(self.widths)
        self.embed = nn.Linear(c_in * side * side, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, HEAD_WIDTH)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] -> (B, feature_dim): the features FD-SW compares."""
        h = self.trunk(x)  # (B, C, 4, 4)
        return F.relu(self.embed(h.flatten(1)))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.features(x))  # (B, HEAD_WIDTH)
        cells = out[:, :CELLS * _CELL_WIDTH].reshape(-1, CELLS, _CELL_WIDTH)  # (B, 9, 16)
        heads, start = {}, 0
        for name, size in zip(("presence", "colour", "shape", "size"), _CELL_SIZES):
            heads[name] = cells[..., start:start + size]  # (B, 9, size)
            start += size
        rest = out[:, CELLS * _CELL_WIDTH:]
        heads["background"] = rest[:, :len(BACKGROUND_NAMES)]  # (B, 4)
        heads["count"] = rest[:, len(BACKGROUND_NAMES):]  # (B, 4)
        return heads


# --------------------------------------------------------------------------- data


def to_input(images) -> torch.Tensor:
    """uint8 images (N, H, W, 3) (or a list of same-size ones) -> (N, 3, 32, 32) in [-1, 1]."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must be uint8 of shape (N, side, side, 3), got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W)
    if x.shape[-1] != INPUT_SIDE:
        x = F.adaptive_avg_pool2d(x, INPUT_SIDE)  # area average: exact for multiples of 32
    return x.contiguous()


def scene_labels(scene) -> np.ndarray:
    """(LABEL_WIDTH,) int64: per grid cell presence, colour, shape, size (IGNORE when empty),
    then background and object count - 1. Two objects in one cell (rare): the larger one."""
    labels = np.full(LABEL_WIDTH, IGNORE, dtype=np.int64)
    labels[0:CELLS * 4:4] = 0
    owner: dict[int, object] = {}
    for obj in scene.objects:
        cell = POSITIONS.index(position_name(obj.cx, obj.cy, scene.side))
        if cell not in owner or obj.r > owner[cell].r:
            owner[cell] = obj
    for cell, obj in owner.items():
        labels[cell * 4:cell * 4 + 4] = (1, COLOURS.index(obj.colour), SHAPES.index(obj.shape), SIZES.index(obj.size))
    labels[CELLS * 4] = BACKGROUND_NAMES.index(scene.background)
    labels[CELLS * 4 + 1] = len(scene.objects) - 1
    return labels


def build_dataset(split: str, start: int, n: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes `start .. start + n - 1` of `split`, scene i rendered at TRAIN_SIDES[i % 3]:
    inputs (n, 3, 32, 32) float16 and labels (n, LABEL_WIDTH) int64."""
    xs = torch.empty(n, 3, INPUT_SIDE, INPUT_SIDE, dtype=torch.float16)
    ys = np.empty((n, LABEL_WIDTH), dtype=np.int64)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"render {split} scenes", dynamic_ncols=True, file=sys.stderr)
    for k in it:
        i = start + k
        scene = make_scene(split, i, TRAIN_SIDES[i % len(TRAIN_SIDES)])
        xs[k] = to_input(render(scene)[None])[0].half()
        ys[k] = scene_labels(scene)
    return xs, torch.from_numpy(ys)


def classifier_loss(heads: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    cell = labels[:, :CELLS * 4].reshape(-1, CELLS, 4)  # (B, 9, 4)
    loss = torch.zeros(())
    for k, name in enumerate(("presence", "colour", "shape", "size")):
        logits = heads[name].reshape(-1, heads[name].shape[-1])  # (B * 9, size)
        target = cell[..., k].reshape(-1)
        if (target != IGNORE).any():
            loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE)
    loss = loss + F.cross_entropy(heads["background"], labels[:, CELLS * 4])
    return loss + F.cross_entropy(heads["count"], labels[:, CELLS * 4 + 1])


@torch.no_grad()
def predict(model: ShapeWorldClassifier, x: torch.Tensor, batch: int = 512) -> dict[str, torch.Tensor]:
    """Arg-max labels of every head for inputs (N, 3, 32, 32)."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(x), batch):
        for name, logits in model(x[s:s + batch].float()).items():
            outs.setdefault(name, []).append(logits.argmax(-1))
    return {k: torch.cat(v) for k, v in outs.items()}


def accuracy(model: ShapeWorldClassifier, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy of every head on a labelled set; attributes are scored on occupied cells only.

    `object`: an occupied cell whose presence, colour, shape and size are all right (chance
    1/64 for colour x shape x size); `scene`: every cell and the background and count right."""
    pred = predict(model, x)
    cell = labels[:, :CELLS * 4].reshape(-1, CELLS, 4)
    occupied = cell[..., 0] == 1  # (N, 9)
    right = {name: pred[name] == cell[..., k] for k, name in enumerate(("presence", "colour", "shape", "size"))}
    obj_ok = right["presence"] & right["colour"] & right["shape"] & right["size"]
    cell_ok = torch.where(occupied, obj_ok, right["presence"])  # (N, 9)
    bg_ok = pred["background"] == labels[:, CELLS * 4]
    count_ok = pred["count"] == labels[:, CELLS * 4 + 1]
    return {
        "presence": float(right["presence"].float().mean()),
        "colour": float(right["colour"][occupied].float().mean()),
        "shape": float(right["shape"][occupied].float().mean()),
        "size": float(right["size"][occupied].float().mean()),
        "object": float(obj_ok[occupied].float().mean()),
        "background": float(bg_ok.float().mean()),
        "count": float(count_ok.float().mean()),
        "scene": float((cell_ok.all(1) & bg_ok & count_ok).float().mean()),
    }


CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "size": 1 / len(SIZES), "object": 1 / (len(COLOURS) * len(SHAPES) * len(SIZES)),
          "background": 1 / len(BACKGROUND_NAMES), "count": 1 / MAX_OBJECTS}


# --------------------------------------------------------------------------- training


def train_classifier(*, n_train: int = 12000, n_test: int = 2000, epochs: int = 8, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, widths: tuple[int, ...] = (16, 32, 64), feature_dim: int = 128,
                     progress: bool = True) -> tuple[ShapeWorldClassifier, dict]:
    """Train on train-split scenes 0 .. n_train - 1; accuracy on test-split scenes 0 .. n_test - 1."""
    tic = time.perf_counter()
    torch.manual_seed(seed)
    x, y = build_dataset("train", 0, n_train, progress)
    x_test, y_test = build_dataset("test", 0, n_test, progress)
    data_s = time.perf_counter() - tic
    model = ShapeWorldClassifier(widths, feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="train FD-SW classifier", dynamic_ncols=True, file=sys.stderr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        for s in range(n_train // batch_size):
            idx = order[s * batch_size:(s + 1) * batch_size]
            loss = classifier_loss(model(x[idx].float()), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    info = {
        "metric": METRIC_NAME,
        "config": {"widths": list(model.widths), "feature_dim": model.feature_dim, "input_side": INPUT_SIDE},
        "training": {"split": "train", "scenes": n_train, "sides": list(TRAIN_SIDES), "epochs": epochs, "batch_size": batch_size,
                     "lr": lr, "seed": seed, "data_s": round(data_s, 1), "wall_s": round(time.perf_counter() - tic, 1),
                     "torch_threads": torch.get_num_threads(), "machine": machine()},
        "test_accuracy": {"split": "test", "scenes": n_test, **accuracy(model, x_test, y_test)},
        "chance": CHANCE,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, info


def save_classifier(model: ShapeWorldClassifier, info: dict, path: Path = DEFAULT_WEIGHTS) -> None:
    """Weights (safetensors, with BatchNorm statistics) and a JSON of config + accuracy, both atomic."""
    from safetensors.torch import save as save_bytes

    from ..checkpoint import atomic_write_bytes, sha256_file

    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save_bytes(state, metadata={"metric": METRIC_NAME}))
    info = {**info, "weights": path.name, "sha256": sha256_file(path)}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())


def load_classifier(path: Path | str = DEFAULT_WEIGHTS) -> tuple[ShapeWorldClassifier, dict]:
    """The classifier saved by `save_classifier` and its JSON (config, accuracy, sha256)."""
    from safetensors.torch import load_file

    path = Path(path)
    info_path = path.with_suffix(".json")
    if not path.exists() or not info_path.exists():
        raise ClassifierError(f"FD-SW classifier {path} (and its {info_path.name}) not found; "
                              "train it with `python -m qk_train.eval.fd train`")
    info = json.loads(info_path.read_text())
    cfg = info["config"]
    if cfg.get("input_side") != INPUT_SIDE:
        raise ClassifierError(f"{info_path} is for {cfg.get('input_side')} px inputs, this code reads {INPUT_SIDE}; retrain with "
                              "`python -m qk_train.eval.fd train`")
    model = ShapeWorldClassifier(tuple(cfg["widths"]), cfg["feature_dim"])
    try:
        model.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise ClassifierError(f"{path} does not match the classifier in {__file__}: {exc}; retrain with "
                              "`python -m qk_train.eval.fd train`") from exc
    return model.eval(), info


# --------------------------------------------------------------------------- Frechet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features, in float64; needs N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors (N, D) for a covariance, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) for PSD covariances (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} vs {mu2.shape}, covariance {s1.shape} vs {s2.shape}")
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1  # symmetric PSD, same spectrum as s1 @ s2
    trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt), 0.0)


class FDSW:
    """FD-SW between image sets with one loaded classifier."""

    def __init__(self, weights: Path | str = DEFAULT_WEIGHTS):
        self.model, self.info = load_classifier(weights)

    @torch.no_grad()
    def features(self, images, batch: int = 256) -> np.ndarray:
        """uint8 (N, side, side, 3) -> (N, feature_dim) float64."""
        x = to_input(images)
        return torch.cat([self.model.features(x[s:s + batch]) for s in range(0, len(x), batch)]).double().numpy()

    def distance(self, images_a, images_b) -> float:
        return frechet_distance(*gaussian_stats(self.features(images_a)), *gaussian_stats(self.features(images_b)))


# --------------------------------------------------------------------------- true FID (optional)


class InceptionUnavailable(ValueError):
    """--inception was given but cannot be used."""


def check_inception(path: Path | str) -> None:
    """Cheap checks before any work: the file exists and torchvision imports."""
    path = Path(path)
    if not path.is_file():
        raise InceptionUnavailable(f"--inception {path}: no such file; pass a local Inception-v3 state dict (.safetensors or .pth)")
    try:
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise InceptionUnavailable("--inception needs torchvision to build the Inception-v3 network: "
                                   "pip install torchvision (the version matching your torch)") from exc


def load_inception(path: Path | str):
    """Inception-v3 (torchvision layout) from a local state dict, its classifier replaced by the identity."""
    path = Path(path)
    check_inception(path)
    from torchvision.models import inception_v3

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
        except Exception as exc:
            raise InceptionUnavailable(f"--inception {path}: not a plain state dict ({exc}); save it as safetensors") from exc
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise InceptionUnavailable(f"--inception {path}: not an Inception-v3 state dict (no 'fc.weight'); "
                                   "use torchvision's inception_v3 weights or pytorch-fid's pt_inception-*.pth")
    net = inception_v3(weights=None, aux_logits=any(k.startswith("AuxLogits.") for k in state), init_weights=False,
                       num_classes=int(state["fc.weight"].shape[0]), transform_input=False)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InceptionUnavailable(f"--inception {path} does not fit torchvision's inception_v3: {exc}") from exc
    net.fc = nn.Identity()
    return net.eval()


@torch.no_grad()
def inception_features(net, images, batch: int = 32) -> np.ndarray:
    """uint8 (N, side, side, 3) -> (N, 2048) pool features at 299 x 299, inputs in [-1, 1]."""
    arr = np.asarray(images)
    out = []
    for s in range(0, len(arr), batch):
        x = torch.from_numpy(arr[s:s + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        out.append(net(x).double())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- the qk-eval hook


def real_images(split: str, start: int, n: int, side: int) -> np.ndarray:
    """Rendered generation targets `start .. start + n - 1` of `split`: (n, side, side, 3) uint8."""
    return np.stack([make_generation(split, i, side)[0] for i in range(start, start + n)]) if n else np.zeros((0, side, side, 3), np.uint8)


def fd_report(generated: list[np.ndarray], *, split: str, side: int, inception: Path | str | None = None,
              weights: Path | str = DEFAULT_WEIGHTS) -> dict:
    """The `fd` entry of qk-eval: FD-SW of the generations for captions 0..n-1 against the real
    images 0..n-1 of the split, the real-vs-real floor (images n..2n-1) at the same n, and true FID
    only when Inception weights are given."""
    n = len(generated)
    report: dict = {"metric": METRIC_NAME, "n": n, "value": None, "real_vs_real": None}
    if inception is None:
        report["inception_fid"] = {"computed": False, "reason": "no --inception weights given: true FID needs Inception-v3 weights, "
                                   "which cannot be downloaded on these machines; pass --inception PATH to a local state dict"}
    if n < 2:
        report["reason"] = f"FD needs at least 2 generations, got {n} (raise --gen-n)"
        if inception is not None:
            report["inception_fid"] = {"computed": False, "reason": report["reason"]}
        return report
    scorer = FDSW(weights)
    fake = np.stack(generated)
    real = real_images(split, 0, n, side)
    floor = real_images(split, n, n, side)
    f_real = gaussian_stats(scorer.features(real))
    report["value"] = frechet_distance(*f_real, *gaussian_stats(scorer.features(fake)))
    report["real_vs_real"] = frechet_distance(*f_real, *gaussian_stats(scorer.features(floor)))
    report["feature_dim"] = scorer.model.feature_dim
    report["classifier"] = {"weights": str(Path(weights).name), "sha256": scorer.info.get("sha256"),
                            "test_accuracy": scorer.info.get("test_accuracy")}
    if inception is not None:
        net = load_inception(inception)
        i_real = gaussian_stats(inception_features(net, real))
        report["inception_fid"] = {
            "computed": True, "weights": str(inception), "n": n,
            "value": frechet_distance(*i_real, *gaussian_stats(inception_features(net, fake))),
            "real_vs_real": frechet_distance(*i_real, *gaussian_stats(inception_features(net, floor))),
            "note": "2048-d features from fewer images than dimensions: heavily biased upwards; compare only at equal n",
        }
    return report


# --------------------------------------------------------------------------- CLI


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qk_train.eval.fd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the classifier and write its weights + JSON")
    tr.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights file (.safetensors); the JSON goes beside it "
                    "(default: the shipped qk_train/eval/fd_classifier.safetensors)")
    tr.add_argument("--n-train", type=int, default=12000, help="train-split scenes (default 12000)")
    tr.add_argument("--n-test", type=int, default=2000, help="test-split scenes for the stated accuracy (default 2000)")
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest on a busy 2-core machine)")
    tr.add_argument("--no-progress", action="store_true")
    ac = sub.add_parser("accuracy", help="accuracy of a saved classifier on test-split scenes")
    ac.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ac.add_argument("--n", type=int, default=2000)
    ac.add_argument("--start", type=int, default=100000, help="first test-split scene (default 100000: not the scenes of the stated figure)")
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.n_train < args.batch_size or args.n_test < 1 or args.epochs < 1:
            parser.error("need --n-train >= --batch-size, --n-test >= 1 and --epochs >= 1")
        if not args.out.endswith(".safetensors"):
            parser.error(f"--out {args.out!r} must end in .safetensors (the JSON is written beside it)")
        torch.set_num_threads(args.threads)
        command = "python -m qk_train.eval.fd train" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])[1:])
        model, info = train_classifier(n_train=args.n_train, n_test=args.n_test, epochs=args.epochs, batch_size=args.batch_size,
                                       lr=args.lr, seed=args.seed, progress=not args.no_progress)
        info["training"]["command"] = command
        save_classifier(model, info, Path(args.out))
        acc = info["test_accuracy"]
        print(f"FD-SW classifier: {info['parameters']} parameters, {info['training']['wall_s']} s; test accuracy "
              + ", ".join(f"{k} {acc[k]:.3f}" for k in ("presence", "colour", "shape", "size", "object", "background", "count", "scene"))
              + f"; written to {args.out}")
        return 0
    try:
        model, info = load_classifier(args.weights)
    except ClassifierError as exc:
        print(f"fd: error: {exc}", file=sys.stderr)
        return 2
    x, y = build_dataset("test", args.start, args.n)
    acc = accuracy(model, x, y)
    print(json.dumps({"weights": args.weights, "split": "test", "start": args.start, "n": args.n, **acc}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

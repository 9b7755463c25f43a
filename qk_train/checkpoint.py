"""Checkpoints: safetensors weights plus the resolved config, written atomically.

A checkpoint is a folder:

    hyperparameters.yaml   the resolved ModelConfig the weights belong to
    model.safetensors      inference weights (the EMA copy), frozen pretrained parts left out
    tokenizer.json         the tokenizer the text encoder was trained with
    pretrained.json        frozen parts referenced by package, path and sha256 (not copied)
    train_state.safetensors / train_state.json   raw weights, optimizer, step (resuming only)

Folders are built under a temporary name beside the target and renamed into place, so a
crash never leaves a half-written checkpoint that looks whole. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "hyperparameters.yaml"
STATE_FILE = "train_state.safetensors"
STATE_META = "train_state.json"
TOKENIZER_FILE = "tokenizer.json"
PRETRAINED_FILE = "pretrained.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not match its config."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def replace_dir(build_dir: Path, final: Path) -> None:
    """Move a fully written folder into place; the old one (if any) is removed only after."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(build_dir, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def new_build_dir(final: Path) -> Path:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(build, 0o777 & ~_umask())  # mkdtemp makes 0700; the finished folder gets the usual permissions
    return build


def _finish_files(folder: Path) -> None:
    """Flush every file of `folder` to disk and give it the usual permissions (safetensors'
    writer makes its files 0600, which other users of a shared machine could not read)."""
    mode = 0o666 & ~_umask()
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, mode)
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": state["param_groups"], "scalars": {}}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    final: Path,
    *,
    config_yaml: str,
    weights: dict[str, torch.Tensor],
    tokenizer_json: str,
    pretrained: dict[str, Any],
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_meta: dict[str, Any] | None = None,
) -> Path:
    build = new_build_dir(final)
    try:
        (build / CONFIG_FILE).write_text(config_yaml)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(build / MODEL_FILE))
        (build / TOKENIZER_FILE).write_text(tokenizer_json)
        (build / PRETRAINED_FILE).write_text(json.dumps(pretrained, indent=2))
        if train_tensors is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in train_tensors.items()}, str(build / STATE_FILE))
            (build / STATE_META).write_text(json.dumps(train_meta or {}, indent=2))
        _finish_files(build)
        replace_dir(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Path(final)


RELEASE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def release(src: Path, dst: Path, dtype: str = "float32") -> Path:
    """A weights-only copy of checkpoint `src` (its EMA weights, config, tokenizer and frozen-part
    references; no optimizer state) at `dst`, floating tensors stored as `dtype`. Models load
    such weights into float32 parameters, so float16 halves the file for a rounding of about
    5e-4 relative per weight. Written atomically; an existing checkpoint at `dst` is replaced."""
    src, dst = check_checkpoint_dir(Path(src)), Path(dst)
    if dtype not in RELEASE_DTYPES:
        raise CheckpointError(f"dtype {dtype!r}: use one of {sorted(RELEASE_DTYPES)}")
    if dst.exists() and not (dst / CONFIG_FILE).exists():
        raise CheckpointError(f"{dst} exists and is not a checkpoint; choose a new folder (nothing was written)")
    if dst.exists() and (is_run_folder(dst) or not (dst / MODEL_FILE).exists()):  # a run folder has a config too
        raise CheckpointError(f"{dst} is a training run folder (checkpoints/, final/, log.jsonl), which --release would "
                              f"replace; choose a new folder (nothing was written)")
    if dst.exists() and (dst.resolve() == src.resolve() or dst.resolve() in src.resolve().parents):
        raise CheckpointError(f"{dst} holds {src} itself; release into a new folder (nothing was written)")
    weights = load_weights(src)
    cast = {k: v.to(RELEASE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in weights.items()}
    return save_checkpoint(dst, config_yaml=(src / CONFIG_FILE).read_text(), weights=cast,
                           tokenizer_json=(src / TOKENIZER_FILE).read_text(),
                           pretrained=read_pretrained(src))


def is_run_folder(path: Path) -> bool:
    """A folder qk-train trains into (as opposed to one checkpoint): it has checkpoints/, final/ or log.jsonl."""
    return any((Path(path) / name).exists() for name in ("checkpoints", "final", "log.jsonl"))


def check_run_folder(out: Path) -> None:
    """`out` may be trained into: absent, empty, or a run folder qk-train wrote (resumed). A
    checkpoint or a folder of other files is refused, so that nothing there is overwritten."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise CheckpointError(f"--out {out} is a file; give a folder for the run (nothing was written)")
    if not any(out.iterdir()):
        return
    if (out / MODEL_FILE).exists():
        raise CheckpointError(f"--out {out} is a checkpoint, not a run folder: training there would overwrite its "
                              f"config; train into a new --out (add --init-from {out} to start from its weights)")
    if not (out / CONFIG_FILE).exists() and not is_run_folder(out):
        raise CheckpointError(f"--out {out} holds files qk-train did not write; choose a new or empty folder "
                              f"(nothing was written)")


def check_checkpoint_dir(path: Path, need_state: bool = False) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass --model with a folder that qk-train wrote")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder; qk-train writes checkpoints as folders")
    needed = [CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE] + ([STATE_FILE, STATE_META] if need_state else [])
    missing = [name for name in needed if not (path / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    read_pretrained(path)  # a damaged pretrained.json is named here, before anything reads it
    return path


def read_pretrained(path: Path) -> dict[str, Any]:
    """The checkpoint's `pretrained.json` ({} when absent): frozen parts referenced by package,
    path and sha256. Read under the runtime's JSON limits; a damaged file is a CheckpointError."""
    from qk_runtime.files import read_json

    refs_file = Path(path) / PRETRAINED_FILE
    if not refs_file.exists():
        return {}
    fix = "the checkpoint is damaged: copy it again or use another one (qk-train writes them whole)"
    refs = read_json(refs_file, CheckpointError, fix)
    if not isinstance(refs, dict):
        raise CheckpointError(f"{refs_file} holds a {type(refs).__name__}, not a JSON object; {fix}")
    for part, ref in refs.items():
        if not ref:
            continue
        sha = ref.get("sha256") if isinstance(ref, dict) else None
        if (not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)
                or not all(isinstance(ref.get(k), (str, type(None))) for k in ("package", "path"))):
            raise CheckpointError(f"{refs_file}: entry {part!r} must be an object with a 64-digit hex 'sha256' and "
                                  f"string or null 'package' and 'path', got {ref!r}; {fix}")
    return refs


def load_weights(path: Path, name: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(Path(path) / name))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {Path(path) / name}: {exc}") from exc


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = check_checkpoint_dir(path, need_state=True)
    tensors = load_weights(path, STATE_FILE)
    from qk_runtime.files import read_json

    meta = read_json(path / STATE_META, CheckpointError, "the checkpoint is damaged: resume from an earlier one")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / STATE_META} is not a JSON object; the checkpoint is damaged: resume from an earlier one")
    return tensors, meta


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return None
    steps = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    return steps[-1] if steps else None


def prune_checkpoints(run_dir: Path, keep: int = 2) -> None:
    ckpt_root = Path(run_dir) / "checkpoints"
    steps = sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

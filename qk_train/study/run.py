"""Training and evaluating the study's arms: each model trained (or resumed) into its run folder,
each arm-seed scored by qk-eval and a pass of its own, the whole study run into its JSON and
tables, and the plan with its wall-time estimate."""
from __future__ import annotations

import datetime
import json
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from ..config import ConfigError, ModelConfig, from_dict
from ..data.shapeworld import EDIT_KINDS, make_edit
from .arms import (
    PROBE_BACKGROUND,
    PROBE_PAIRS,
    SMOKE_WARNING,
    Arm,
    Member,
    Options,
    StudyError,
    build_arms,
    dual_sizing,
    member_config,
    select_arms,
    smoke_reasons,
    trainable_parameters,
)
from .report import METRIC_NOTES, arm_entry, arm_samples, seed_figures, write_study
from .stats import method_note
from .verdicts import VERDICT_RULE, claims

STABILITY_SEED_STRIDE = 100_003  # noise seed of edit i under stability seed k: k * stride + i (k = 0: qk-eval's)
EVAL_VERSION = 2  # bump when the evaluation changes, so that stored evaluations are redone (2: per-item outcomes kept)
DRIFT_DIGITS = 6  # per-edit drift (0-1 scale) as stored in eval.json


# --------------------------------------------------------------------------- training


def _finished(final: Path, cfg: ModelConfig) -> bool:
    hp = final / "hyperparameters.yaml"
    if not (final / "model.safetensors").exists() or not hp.exists():
        return False
    return from_dict(yaml.safe_load(hp.read_text()), where=str(hp)) == cfg


def train_member(cfg: ModelConfig, run_dir: Path, progress: bool) -> tuple[Path, dict | None]:
    """Train (or resume) one model; (final folder, timing) or (final folder, None) when already done."""
    from ..checkpoint import atomic_write_bytes
    from ..train import Trainer

    final = run_dir / "final"
    if _finished(final, cfg):
        return final, None
    hp = run_dir / "hyperparameters.yaml"
    if hp.exists():
        old = from_dict(yaml.safe_load(hp.read_text()), where=str(hp))
        if old.replace(train={"steps": cfg.train.steps}) != cfg:
            raise StudyError(f"{run_dir} holds a run with a different config ({hp}); rerun with the same --preset/--set, "
                             f"or use a new --out")
        if old.train.steps != cfg.train.steps:  # --steps raised or lowered: continue the same run
            atomic_write_bytes(hp, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    tic = time.perf_counter()
    final = Trainer(cfg, run_dir, progress=progress).run()
    return final, {"wall_s": time.perf_counter() - tic, **step_rates(run_dir, cfg)}


def step_rates(run_dir: Path, cfg: ModelConfig) -> dict:
    """Seconds per step of each stage, from the last qk-train log line of the stage (img/s over the last call);
    {} where the run folder or its log is absent (a study resumed from its stored evaluations)."""
    rates: dict = {}
    log = run_dir / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            batch = cfg.train.ae_batch_size if rec["stage"] == "ae" else cfg.train.batch_size
            if rec.get("img_s"):
                rates[f"s_per_step_{rec['stage']}"] = batch / rec["img_s"]
    return rates


# --------------------------------------------------------------------------- evaluation


def _edit_involves_probe(sample) -> bool:
    return any(o is not None and (o.colour, o.shape) in PROBE_PAIRS for o in (sample.old_obj, sample.target_obj))


@lru_cache(maxsize=4)
def probe_pair_edits(n: int, side: int) -> tuple:
    """`n` test edits whose edited object is a PROBE_PAIRS pair, kinds in equal shares (deterministic scan)."""
    out = []
    for k, kind in enumerate(EDIT_KINDS):
        want = n // len(EDIT_KINDS) + (1 if k < n % len(EDIT_KINDS) else 0)
        i, found = 0, 0
        while found < want:
            if i > 200 * max(n, 1):
                raise StudyError(f"found only {found} {kind!r} test edits involving {PROBE_PAIRS}; lower --probe-n")
            sample = make_edit("test", i, side, kind=kind)
            if _edit_involves_probe(sample):
                out.append(sample)
                found += 1
            i += 1
    return tuple(out)


@lru_cache(maxsize=4)
def background_edits(n: int, side: int) -> tuple:
    return tuple(make_edit("test", i, side, kind=EDIT_KINDS[i % len(EDIT_KINDS)], backgrounds=(PROBE_BACKGROUND,)) for i in range(n))


def _run_edits(pipe, samples, seeds: list[int], steps: int | None, chunk: int = 16):
    outs = []
    for s in range(0, len(samples), chunk):
        part = samples[s:s + chunk]
        outs += pipe.edit_batch([x.source for x in part], [x.instruction for x in part], [x.box for x in part],
                                steps=steps, seeds=seeds[s:s + chunk])
    return outs


def gate_overlap(gate: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> dict:
    """IoU, precision and recall of a (gh, gw) gate (> threshold) against a (H, W) change mask at token resolution."""
    gh, gw = gate.shape
    tp = mask.shape[0] // gh
    true = mask.reshape(gh, tp, gw, tp).any(axis=(1, 3))  # (gh, gw)
    pred = gate > threshold
    inter, union = int((pred & true).sum()), int((pred | true).sum())
    return {"iou": inter / union if union else 1.0, "precision": inter / int(pred.sum()) if pred.any() else 0.0,
            "recall": inter / int(true.sum()) if true.any() else 1.0}


def details_pass(model_path: Path, opts: Options, probe_sets: bool, progress: bool) -> dict:
    """Stability over noise seeds, per-edit success/drift/kind, gate overlap and (optionally) the probe sets."""
    from ..eval.metrics import score_edit
    from ..models.unified import QKModel
    from ..pipeline import Pipeline

    pipe = Pipeline(QKModel.from_checkpoint(model_path))
    has_gate = pipe.model.cmg is not None
    side = pipe.side
    n = opts.stability_n
    samples = [make_edit("test", i, side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n)]
    success = np.zeros((opts.stability_seeds, n), dtype=bool)
    drift = np.zeros(n)
    overlap: list[dict] = []
    seeds = range(opts.stability_seeds)
    if progress:
        from tqdm import tqdm

        seeds = tqdm(seeds, desc="stability seeds", dynamic_ncols=True, file=sys.stderr, leave=False)
    for k in seeds:
        outs = _run_edits(pipe, samples, [k * STABILITY_SEED_STRIDE + i for i in range(n)], opts.sample_steps)
        for i, (sample, out) in enumerate(zip(samples, outs)):
            score = score_edit(out.image, sample)
            success[k, i] = score["success"]
            if k == 0:
                drift[i] = score["drift"]
                if has_gate:
                    overlap.append(gate_overlap(out.gate, sample.mask))
    result = {
        "n": n, "noise_seeds": opts.stability_seeds, "kinds": [s.kind for s in samples],
        "probe_pair": [_edit_involves_probe(s) for s in samples],
        "success": success.astype(int).tolist(), "drift": _rounded(drift),
        "gate": None if not has_gate else {k: _rounded([o[k] for o in overlap], 4) for k in ("iou", "precision", "recall")},
    }
    if probe_sets:
        result["probe_sets"] = {}
        for name, ps in (("held_out_pairs", probe_pair_edits(opts.probe_n, side)), ("background", background_edits(opts.probe_n, side))):
            outs = _run_edits(pipe, list(ps), list(range(len(ps))), opts.sample_steps)
            scores = [score_edit(o.image, s) for o, s in zip(outs, ps)]
            result["probe_sets"][name] = {"n": len(ps), "success": [int(s["success"]) for s in scores],
                                          "drift": _rounded([s["drift"] for s in scores]), "kinds": [s.kind for s in ps]}
    return result


def _rounded(values, digits: int = DRIFT_DIGITS) -> list[float]:
    return [round(float(v), digits) for v in values]


def evaluate_with_outcomes(model: Path, n: int, gen_n: int, steps: int | None, progress: bool) -> tuple[dict, dict]:
    """qk-eval's figures of `model` on the test split (both box settings, seed 0, template
    instructions) and the per-item outcomes behind them (`evaluate(..., outcomes=True)`): per edit
    and setting `success` (v1), `strict` (0/1) and `drift`; per generation `correct` (the v1.1
    judge) and `correct_v1`. The figures are checked to be the means of the outcomes."""
    from ..eval.evaluate import evaluate

    result = evaluate(model, split="test", n=n, gen_n=gen_n, steps=steps, seed=0, progress=progress, outcomes=True)
    outcomes = result.pop("outcomes")
    _check_outcomes(result, outcomes)
    return result, outcomes


def _check_outcomes(result: dict, outcomes: dict) -> None:
    """The per-item outcomes must give qk-eval's own figures back; a mismatch is a bug, not a result."""
    pairs = []
    if outcomes["edits"]:
        for s, o in outcomes["edits"].items():
            pairs += [(f"edit_success[{s}]", result["edit_success"][s]["overall"], np.mean(o["success"])),
                      (f"edit_success_strict[{s}]", result["edit_success_strict"][s]["overall"], np.mean(o["strict"])),
                      (f"drift[{s}]", result["drift"][s], np.mean(o["drift"]))]
    if outcomes["generations"]:
        pairs.append(("gen_accuracy", result["gen_accuracy"], np.mean(outcomes["generations"]["correct"])))
    for name, theirs, ours in pairs:
        if abs(theirs - ours) > 1e-5:
            raise StudyError(f"per-item outcomes do not reproduce qk-eval's {name}: {ours} vs {theirs}; "
                             "the recorded outputs do not match the evaluated ones")


def _sha(path: Path) -> str:
    from ..checkpoint import sha256_file

    return sha256_file(path / "model.safetensors")


def eval_settings(arm: Arm, opts: Options) -> dict:
    """Everything but the models that decides an arm-seed's evaluation: its stored key, less the model hashes."""
    return {"version": EVAL_VERSION, "n": opts.n, "gen_n": opts.gen_n, "sample_steps": opts.sample_steps,
            "stability_seeds": opts.stability_seeds, "stability_n": opts.stability_n,
            "probe_n": opts.probe_n if arm.probe_sets else None}


def _read_json(path: Path, what: str, fix: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(f"{path}: cannot read {what} ({exc}); {fix}") from None
    if not isinstance(value, dict):
        raise StudyError(f"{path}: {what} should be a JSON object, found {type(value).__name__}; {fix}")
    return value


def load_evaluation(path: Path) -> dict:
    """A stored arm-seed evaluation, checked to hold what the study reads from it (a StudyError says how to fix it)."""
    fix = (f"restore it (e.g. git checkout -- {path}) or delete it; a deleted evaluation is redone, and where the "
           "arm-seed's models are absent they are trained again first")
    record = _read_json(path, "a stored evaluation", fix)
    missing = [k for k in ("key", "qk_eval", "outcomes", "details") if k not in record]
    if missing or not isinstance(record["key"], dict):
        raise StudyError(f"{path} is not a qk-study evaluation (missing or malformed: {missing or ['key']}); {fix}")
    try:
        seed_figures(record)
        arm_samples([record])
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise StudyError(f"{path}: the evaluation's figures cannot be read ({type(exc).__name__}: {exc}); {fix}") from None
    return record


def models_absent(arm: Arm, seed_dir: Path) -> bool:
    """No member of the arm-seed has a final model (its run folders were lost, or never made)."""
    return not any((seed_dir / m.role / "final" / "model.safetensors").exists() for m in arm.members)


def reuse_refusal(record: dict, arm: Arm, configs: dict[str, ModelConfig], opts: Options) -> str | None:
    """Why a stored evaluation cannot stand in for its arm-seed's absent models; None when it can.

    It can when it was made with these evaluation settings of models trained with exactly these
    configs. That is sound because training is deterministic given the config: every batch and its
    noise is a pure function of (seed, step, rank) and the initialisation follows train.seed, so
    training again would give the same models (bit for bit on the same device and torch build; on
    another only up to floating-point rounding) and evaluating them the same record."""
    settings = eval_settings(arm, opts)
    theirs = {k: v for k, v in record["key"].items() if k != "models"}
    if theirs != settings:
        diff = sorted(k for k in settings.keys() | theirs.keys() if theirs.get(k) != settings.get(k))
        return "it was made with other evaluation settings (" + ", ".join(
            f"{k} {theirs.get(k)!r}, now {settings.get(k)!r}" for k in diff) + ")"
    stored = record.get("configs")
    if not isinstance(stored, dict):
        return "it does not hold its models' training configs (written before qk-study stored them)"
    if sorted(stored) != sorted(configs):
        return f"it holds the configs of models {sorted(stored)}, this arm trains {sorted(configs)}"
    for role, cfg in configs.items():
        try:
            old = from_dict(stored[role], where=f"configs.{role}")
        except ConfigError as exc:
            return f"its {role} config no longer reads ({exc})"
        if old != cfg:
            return f"its {role} model was trained with another config ({_config_diff(old, cfg)})"
    return None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config_diff(old: ModelConfig, new: ModelConfig) -> str:
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k)!r}, now {b.get(k)!r}" for k in keys[:6]) + (", ..." if len(keys) > 6 else "")


def stored_train_info(record: dict, configs: dict[str, ModelConfig], seed: int) -> list[dict]:
    """The train entries of an arm-seed whose run folders are absent: what its eval.json kept (steps, step rates)."""
    kept = record.get("train") if isinstance(record.get("train"), dict) else {}
    return [{"seed": seed, "role": role, "steps": cfg.train.steps,
             **(kept[role] if isinstance(kept.get(role), dict) else {})} for role, cfg in configs.items()]


def evaluate_arm(arm: Arm, finals: dict[str, Path], configs: dict[str, ModelConfig], train: dict[str, dict],
                 opts: Options, path: Path, progress: bool) -> tuple[dict, bool]:
    """(the arm-seed evaluation, whether it ran now). Stored in `path` with the members' resolved training
    `configs` and `train` info (steps, step rates: what `reuse_refusal` and a resumed study without the
    models need); rerun only when its key (settings and model hashes) changes."""
    from ..checkpoint import atomic_write_bytes

    key = {**eval_settings(arm, opts), "models": {r: _sha(p) for r, p in sorted(finals.items())}}
    kept = {"configs": {r: c.to_dict() for r, c in sorted(configs.items())}, "train": train}
    if path.exists():
        stored = load_evaluation(path)
        if stored["key"] == key:
            if stored.get("configs") != kept["configs"] or "train" not in stored:
                # written before eval.json kept them: add them, from the finished models' configs (train_member checked)
                stored = {**stored, **kept}
                atomic_write_bytes(path, (json.dumps(stored) + "\n").encode())
            return stored, False
    tic = time.perf_counter()
    if arm.dual:
        qk_edit, out_edit = evaluate_with_outcomes(finals["edit"], opts.n, 0, opts.sample_steps, progress)
        qk_gen, out_gen = evaluate_with_outcomes(finals["gen"], 0, opts.gen_n, opts.sample_steps, progress)
        qk = {"edit": qk_edit, "gen": qk_gen}
        outcomes = {"edits": out_edit["edits"], "generations": out_gen["generations"]}
        edit_model = finals["edit"]
    else:
        qk_model, outcomes = evaluate_with_outcomes(finals["model"], opts.n, opts.gen_n, opts.sample_steps, progress)
        qk = {"model": qk_model}
        edit_model = finals["model"]
    details = details_pass(edit_model, opts, arm.probe_sets, progress)
    record = {"key": key, **kept, "arm": arm.name, "qk_eval": qk, "outcomes": outcomes, "details": details,
              "wall_s": time.perf_counter() - tic}
    atomic_write_bytes(path, (json.dumps(record) + "\n").encode())
    return record, True


# --------------------------------------------------------------------------- the study


def _timings(out: Path) -> dict:
    path = out / "timings.json"
    return _read_json(path, "the study's timings", "restore it (e.g. git checkout) or delete it (the compute "
                      "total then counts only what runs from now)") if path.exists() else {}


def _add_timing(out: Path, key: str, seconds: float) -> None:
    from ..checkpoint import atomic_write_bytes

    t = _timings(out)
    t[key] = t.get(key, 0.0) + seconds
    atomic_write_bytes(out / "timings.json", (json.dumps(t, indent=1) + "\n").encode())


def _check_study_folder(opts: Options) -> None:
    from ..checkpoint import atomic_write_bytes

    path = opts.out / "study_config.json"
    mine = {"preset": opts.preset, "set": list(opts.sets)}
    if path.exists():
        theirs = _read_json(path, "the study's config", "restore it (e.g. git checkout): it records the --preset "
                            "and --set that OUT's models and evaluations were made with")
        if {k: theirs.get(k) for k in mine} != mine:
            raise StudyError(f"{opts.out} holds a study with preset {theirs.get('preset')!r} and --set {theirs.get('set')}; "
                             f"rerun with those, or use a new --out")
    else:
        atomic_write_bytes(path, (json.dumps(mine, indent=1) + "\n").encode())


def run_study(opts: Options) -> dict:
    from tqdm import tqdm

    from ..eval.fd import machine

    call_tic = time.perf_counter()
    base = member_config(opts, Member("model"), opts.seeds[0])
    sizing = dual_sizing(base)
    arms = select_arms(build_arms(base, sizing["width"]), opts.arms)
    opts.out.mkdir(parents=True, exist_ok=True)
    _check_study_folder(opts)
    trained = [a for a in arms if a.alias_of is None]
    jobs = sum(len(a.members) + 1 for a in trained) * len(opts.seeds)
    bar = tqdm(total=jobs, desc="qk-study", dynamic_ncols=True, file=sys.stderr, disable=not opts.progress)
    records: dict[str, list[dict]] = {a.name: [] for a in trained}
    train_info: dict[str, list[dict]] = {a.name: [] for a in trained}
    done = {"trained": [], "evaluated": [], "skipped": [], "reused_without_models": []}
    try:
        for seed in opts.seeds:
            for arm in trained:
                seed_dir = opts.out / arm.name / f"seed{seed}"
                eval_path = seed_dir / "eval.json"
                configs = {m.role: member_config(opts, m, seed) for m in arm.members}
                job = f"{arm.name}/seed{seed}"
                if eval_path.exists() and models_absent(arm, seed_dir):  # e.g. another machine: only OUT's *.json kept
                    record = load_evaluation(eval_path)
                    why = reuse_refusal(record, arm, configs, opts)
                    if why is None:  # the stored evaluation stands in for the models: nothing trained, nothing evaluated
                        done["skipped"] += [f"train {job}/{role}" for role in configs] + [f"eval {job}"]
                        done["reused_without_models"].append(job)
                        train_info[arm.name] += stored_train_info(record, configs, seed)
                        records[arm.name].append(record)
                        bar.update(len(configs) + 1)
                        continue
                    tqdm.write(f"qk-study: {job}: its models are absent and {eval_path} cannot stand in for them: {why}; "
                               "training them again", file=sys.stderr)
                finals, info = {}, {}
                for member in arm.members:
                    mjob = f"{job}/{member.role}"
                    bar.set_postfix_str(f"train {mjob}")
                    cfg = configs[member.role]
                    finals[member.role], timing = train_member(cfg, seed_dir / member.role, opts.progress)
                    if timing is None:
                        done["skipped"].append(f"train {mjob}")
                    else:
                        done["trained"].append(mjob)
                        _add_timing(opts.out, f"train {mjob}", timing["wall_s"])
                    info[member.role] = {"steps": cfg.train.steps, **step_rates(seed_dir / member.role, cfg)}
                    train_info[arm.name].append({"seed": seed, "role": member.role, **info[member.role]})
                    bar.update(1)
                bar.set_postfix_str(f"evaluate {job}")
                record, ran = evaluate_arm(arm, finals, configs, info, opts, eval_path, opts.progress)
                if ran:
                    done["evaluated"].append(job)
                    _add_timing(opts.out, f"eval {job}", record["wall_s"])
                else:
                    done["skipped"].append(f"eval {job}")
                records[arm.name].append(record)
                bar.update(1)
    finally:
        bar.close()

    params = {}
    for arm in trained:
        params[arm.name] = sum(trainable_parameters(member_config(opts, m, opts.seeds[0])) for m in arm.members)
    samples = {a.name: arm_samples(records[a.name]) for a in trained}
    entries = {a.name: arm_entry(a, list(opts.seeds), records[a.name], params[a.name], train_info[a.name], samples[a.name])
               for a in trained}
    arm_list = []
    for a in arms:
        if a.alias_of is None:
            arm_list.append(entries[a.name])
        elif a.alias_of in entries:
            arm_list.append({**entries[a.alias_of], "name": a.name, "what": a.what, "alias_of": a.alias_of})
    reasons = smoke_reasons(opts, base)
    timings = _timings(opts.out)
    study = {
        "title": "Query-Kontext study: ablations on ShapeWorld",
        "smoke": bool(reasons), "smoke_reasons": reasons, "warning": SMOKE_WARNING if reasons else None,
        "command": opts.command, "preset": opts.preset, "set": list(opts.sets), "steps": base.train.steps, "seeds": list(opts.seeds),
        "eval": {"split": "test", "n": opts.n, "gen_n": opts.gen_n, "sample_steps": opts.sample_steps,
                 "stability_seeds": opts.stability_seeds, "stability_n": opts.stability_n, "probe_n": opts.probe_n},
        "wall_s": {"this_call": time.perf_counter() - call_tic, "total_compute": float(sum(timings.values()))},
        "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "this_call": done,
        "dual_sizing": sizing,
        "probe": {"pairs": [list(p) for p in PROBE_PAIRS], "background": PROBE_BACKGROUND,
                  "what": "probe arm trained without these (colour, shape) pairs; held-out-pair edits have one of them as the "
                          "edited object; background edits use the fifth background, which no arm was trained on"},
        "fd_metric": "FD-SW (ShapeWorld classifier features), not Inception FID",
        "metrics": METRIC_NOTES,
        "statistics": {**method_note(), "verdict_rule": VERDICT_RULE},
        "arms": arm_list,
    }
    arm_samples_by_name = {a["name"]: samples[a.get("alias_of") or a["name"]] for a in arm_list}
    scale = {"preset": opts.preset, "steps": base.train.steps, "seeds": list(opts.seeds), "eval": study["eval"]}
    study["claims"] = claims({a["name"]: a for a in arm_list}, arm_samples_by_name, bool(reasons), scale)
    write_study(study, opts.json_path, opts.table_path)
    return study


# --------------------------------------------------------------------------- plan and estimate


def measure_step_times(cfg: ModelConfig, steps: int) -> dict:
    """Seconds per joint-stage and autoencoder step of one config, timed over `steps` steps after a warm-up step."""
    import torch

    from ..models.unified import QKModel
    from ..train import STAGE_AE, STAGE_MAIN, codec_loss, make_batch, step_seed

    torch.manual_seed(0)
    model = QKModel(cfg).train()
    out = {}
    stages = [STAGE_MAIN] + ([STAGE_AE] if cfg.codec.kind == "tiny_ae" and cfg.train.ae_steps else [])
    for stage in stages:
        params = list(model.codec.parameters()) if stage == STAGE_AE else model.main_parameters()
        opt = torch.optim.AdamW(params, lr=1e-4)
        times = []
        for step in range(steps + 1):
            tic = time.perf_counter()
            batch = make_batch(cfg, stage, step, 0, 1)
            gen = torch.Generator().manual_seed(step_seed(cfg, stage, step, 0))
            loss = codec_loss(model, batch)[0] if stage == STAGE_AE else model.loss(batch, gen)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - tic)
        out[stage] = float(np.median(times[1:]))
    return out


def measure_sample_times(cfg: ModelConfig, steps: int | None, batch: int = 16) -> dict:
    """Seconds per edit and per generation of the torch pipeline (batches of `batch`, as qk-eval runs them),
    on an untrained model of this config (the cost does not depend on the weights)."""
    import torch

    from ..models.unified import QKModel
    from ..pipeline import Pipeline

    torch.manual_seed(0)
    pipe = Pipeline(QKModel(cfg).eval())
    samples = [make_edit("test", i, pipe.side, kind=EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(batch)]
    _run_edits(pipe, samples[:2], [0, 1], steps)  # warm-up
    tic = time.perf_counter()
    _run_edits(pipe, samples, list(range(batch)), steps)
    edit = (time.perf_counter() - tic) / batch
    tic = time.perf_counter()
    pipe.generate_batch(["a large red circle at the top left"] * batch, steps=steps, seeds=list(range(batch)))
    return {"edit": edit, "generation": (time.perf_counter() - tic) / batch}


def plan(opts: Options, measure: int) -> str:
    base = member_config(opts, Member("model"), opts.seeds[0])
    sizing = dual_sizing(base)
    arms = select_arms(build_arms(base, sizing["width"]), opts.arms)
    lines = [f"qk-study plan: preset {opts.preset}, {base.train.steps} joint steps (+ {base.train.ae_steps} autoencoder steps "
             f"where the codec is trained), seeds {list(opts.seeds)}",
             f"dual sizing: full {sizing['full']:,} vs {sizing['gen']:,} + {sizing['edit']:,} = {sizing['dual_total']:,} "
             f"({100 * sizing['ratio']:.1f} %) at width {sizing['width']}"]
    total = 0.0
    for arm in arms:
        if arm.alias_of:
            lines.append(f"  {arm.name:12s} = {arm.alias_of}")
            continue
        for m in arm.members:
            cfg = member_config(opts, m, opts.seeds[0])
            text = f"  {arm.name:12s} {m.role:5s} {trainable_parameters(cfg):>11,} params  {' '.join(m.overrides) or '(preset)'}"
            if measure:
                t = measure_step_times(cfg, measure)
                ae = cfg.train.ae_steps if cfg.codec.kind == "tiny_ae" else 0
                seconds = (cfg.train.steps * t["main"] + ae * t.get("ae", 0.0)) * len(opts.seeds)
                total += seconds
                text += f"  {t['main']:.2f} s/step" + (f", ae {t['ae']:.2f} s/step" if "ae" in t else "") + f" -> {_duration(seconds)}"
            lines.append(text)
    if measure:
        t = measure_sample_times(base, opts.sample_steps)
        evals, gens = 0, 0
        for arm in arms:
            if arm.alias_of is None:
                evals += 2 * opts.n + opts.stability_seeds * opts.stability_n + (2 * opts.probe_n if arm.probe_sets else 0)
                gens += opts.gen_n
        evaluation = (evals * t["edit"] + gens * t["generation"]) * len(opts.seeds)
        lines.append(f"training, all arms and seeds: about {_duration(total)} (median over {measure} steps per config; on a shared "
                     "machine the spread between runs is large)")
        lines.append(f"evaluation: {evals * len(opts.seeds)} edits at {t['edit']:.2f} s and {gens * len(opts.seeds)} generations at "
                     f"{t['generation']:.2f} s (full model's size): about {_duration(evaluation)}")
        lines.append(f"total: about {_duration(total + evaluation)} on this machine")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"

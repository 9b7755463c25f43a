"""qk-study: test the Query-Kontext study's claims with ablations trained on one budget.

    qk-study --preset small --steps 2000 --seeds 0,1 --out runs/study                # the study (many hours on 2 cores)
    qk-study --preset small --steps 2000 --seeds 0,1 --plan --measure 3              # arms, sizes, wall-time estimate
    qk-study --preset tiny --steps 4 --seeds 0 --n 10 --out runs/smoke --json runs/smoke/study.json   # smoke

Every arm is the `--preset` config with a few values changed, trained for `--steps` joint steps
once per seed in `--seeds` (`train.seed`), then evaluated on the ShapeWorld test split with
`qk-eval` (`qk_train.eval.evaluate.evaluate`: edit success with and without the box, drift,
generation accuracy, FD-SW) plus a pass of its own (stability over noise seeds, per-kind drift,
the Cross-Modal Gate against the true change mask):

| arm | change from the preset |
|---|---|
| full | none |
| no_cmg | `gate.enabled=false`: the decoder's update is not gated |
| no_gateway | `gateway.enabled=false`: text-only conditioning (the no-query-conditioning baseline) |
| dual | two models, each with a narrower decoder/gateway/CMG (`decoder.width`, chosen so that the pair's trainable parameters match `full`'s): a generation-only one (`train.edit_fraction=0`, no CMG, which generation never uses) and an editing-only one (`train.edit_fraction=1`); edits come from the editing model, generations and FD-SW from the generation model |
| depth1, depth2, depth4 | `gateway.layers` (fusion depth); the one equal to the preset is `full` itself |
| edit_w0.5, edit_w1, edit_w2 | `train.edit_loss_weight` (generation weight stays 1); the preset's is `full` |
| probe | `data.exclude_pairs` = PROBE_PAIRS only (the generalization probe) |

The probe arm and `full` are also scored on two held-out sets: test edits whose edited object is
one of PROBE_PAIRS (balanced over the five kinds), and test edits on the fifth background
PROBE_BACKGROUND (never drawn in training by any arm).

Stability: the first `--stability-n` test edits (with their box) are run with `--stability-seeds`
noise seeds (qk-eval's seed 0 first); an edit is stable when it succeeds for every seed. Gate IoU:
the CMG's thresholded per-token gate against the true change mask at token resolution (a token
changes when any of its pixels does), per edit, averaged; precision and recall beside it.

Resumable: each model trains into `OUT/<arm>/seed<k>/<role>/` with qk-train's checkpoints and
resumes from them; a finished model (its `final/` holds this config) is not trained again and
an evaluation whose settings and model hashes match `OUT/<arm>/seed<k>/eval.json` is not rerun.
Raising `--steps` continues every run. Each `eval.json` keeps qk-eval's figures and the per-item
outcomes behind them (`outcomes`: per test edit, with and without the box, success, strict
success and drift; per generation, correctness), beside its own pass (`details`), its members'
resolved training configs (`configs`) and their steps and step times (`train`).

To resume on another machine, keep OUT's small files (commit them): `study_config.json`,
`timings.json` and every `<arm>/seed<k>/eval.json`; the model folders may go. An arm-seed whose
models are all absent is then neither trained nor evaluated when its `eval.json` was made with the
same evaluation settings and the same training configs (training is deterministic given the
config); otherwise its models are trained again, and a line on stderr says why.

Intervals (`qk_train.study.stats`): every figure and every comparison of the claims carries a
95 % percentile interval from 2,000 resamples of a two-level bootstrap over training seeds and
test items (the same item draw for every drawn seed; comparisons between arms paired by seed
and edit; fixed RNG seed). With one training seed the interval is over items only, and says so;
FD-SW, a set statistic, is resampled over training seeds only and has no interval with one seed.
A claim holds when its effect's interval lies on the claimed side of no effect and reaches the
article's figure, is contradicted when the whole interval falls short of the figure, and is not
shown otherwise (`qk_train.study.verdicts`).

Outputs (written atomically): `--json` (default `benchmarks/results/study/study.json`): the
command, preset, steps, seeds, eval sizes, wall time, machine, `statistics` (the interval method
and the verdict rule), per arm its figures (`edit_success`, `edit_success_strict`, `drift`, `fd`,
`gen_accuracy`, ...: means over seeds), `per_seed`, `spread` and `ci95` (per figure `estimate`,
`lo`, `hi`, `over`), and `claims` (per claim the article's figure, ours, `effects` with their
intervals, the verdict, why, and the scale); and the markdown tables beside it (`--table`,
default the same name with `.md`): the arms with each figure's interval, and the claims with the
article's figure, ours with its interval, the verdict and the scale it was measured at. A run on
the `tiny` preset, under 1000 steps or under 50 edits is a smoke run: the JSON and the tables say
so in capitals, and no figure of it is evidence.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import ConfigError, preset_names
from ..data.shapeworld import EDIT_KINDS
from .arms import Options, StudyError
from .run import plan, run_study

DEFAULT_JSON = Path("benchmarks") / "results" / "study" / "study.json"


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: use comma-separated integers, e.g. 0,1") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1")
    return seeds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="qk-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help=f"preset ({', '.join(preset_names())}) or a YAML file (default: small)")
    parser.add_argument("--steps", type=int, default=None, help="joint steps per model (default: the preset's train.steps)")
    parser.add_argument("--seeds", type=_seeds, default=(0, 1), help="training seeds, comma-separated (default 0,1)")
    parser.add_argument("--out", default="runs/study", help="study folder: one run folder per arm, seed and model (default runs/study)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"the study's JSON (default {DEFAULT_JSON})")
    parser.add_argument("--table", default=None, help="the markdown tables (default: --json with .md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a config change for every arm")
    parser.add_argument("--arms", default=None, help="comma-separated subset of arms (default: all)")
    parser.add_argument("--n", type=int, default=200, help="test edits per evaluation, run with and without the box (default 200)")
    parser.add_argument("--gen-n", type=int, default=200, help="generations per evaluation, for gen_accuracy and FD-SW (default 200)")
    parser.add_argument("--sample-steps", type=int, default=None, help="denoising steps (default: the pipeline's, 20)")
    parser.add_argument("--stability-seeds", type=int, default=4, help="noise seeds per edit for stability (default 4)")
    parser.add_argument("--stability-n", type=int, default=None, help="edits in the stability pass (default: --n, at most 100)")
    parser.add_argument("--probe-n", type=int, default=100, help="edits in each probe set (default 100)")
    parser.add_argument("--plan", action="store_true", help="print the arms, their sizes and (with --measure) a wall-time estimate; train nothing")
    parser.add_argument("--measure", type=int, default=0, metavar="K", help="with --plan: time K training steps of every config")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.measure and not args.plan:
        parser.error("--measure only times steps for --plan's estimate; add --plan (or leave --measure out to run the study)")
    if args.measure < 0:
        parser.error(f"--measure {args.measure}: must be >= 0")
    if args.n < 1 or args.gen_n < 2 or args.stability_seeds < 1 or args.probe_n < len(EDIT_KINDS):
        parser.error(f"need --n >= 1, --gen-n >= 2 (a covariance for FD-SW), --stability-seeds >= 1 and --probe-n >= {len(EDIT_KINDS)}")
    stability_n = min(args.n, 100) if args.stability_n is None else args.stability_n
    if not 1 <= stability_n <= args.n:
        parser.error(f"--stability-n must lie in 1..--n ({args.n}), got {stability_n}")
    json_path = Path(args.json)
    opts = Options(
        preset=args.preset, steps=args.steps, seeds=args.seeds, out=Path(args.out), json_path=json_path,
        table_path=Path(args.table) if args.table else json_path.with_suffix(".md"), sets=tuple(args.set),
        arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()) if args.arms else None,
        n=args.n, gen_n=args.gen_n, sample_steps=args.sample_steps, stability_seeds=args.stability_seeds, stability_n=stability_n,
        probe_n=args.probe_n, progress=not args.no_progress, command="qk-study " + " ".join(shlex.quote(a) for a in argv),
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.plan:
            print(plan(opts, args.measure))
            return 0
        from ..train import _stop_on_signals

        _stop_on_signals()  # SIGTERM as Ctrl-C: stop with a message, finished arms kept
        study = run_study(opts)
    except (ConfigError, StudyError) as exc:
        print(f"qk-study: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nqk-study: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    done = study["this_call"]
    reused = f" ({len(done['reused_without_models'])} arm-seed(s) from eval.json, models absent)" if done["reused_without_models"] else ""
    full = next((a for a in study["arms"] if a["name"] == "full"), None)
    head = f"; full: edit success {full['edit_success']:.3f}, drift {full['drift']:.4f}, FD-SW {full['fd']:.3f}" if full and full["fd"] is not None else ""
    print(f"qk-study: {len(study['arms'])} arms x {len(opts.seeds)} seed(s); trained {len(done['trained'])}, evaluated "
          f"{len(done['evaluated'])}, skipped {len(done['skipped'])}{reused}{head}; wrote {opts.json_path} and {opts.table_path}"
          + (" (SMOKE RUN: NOT EVIDENCE)" if study["smoke"] else ""))
    return 0

"""qk-study: test the Query-Kontext study's claims with ablations trained on one budget
(`qk-study --help`, or `cli.py`'s docstring, says what it runs and writes).

| module | what |
|---|---|
| `arms.py` | the arms and their models' config changes, the dual pipeline's sizing, the options, smoke runs |
| `run.py` | training and evaluating every arm per seed (resumable), the whole study run, `--plan` |
| `report.py` | per-seed figures and their spread (the JSON's arm entries), the markdown tables, writing both |
| `verdicts.py` | the article's claims, each with its figure, ours and a verdict |
| `cli.py` | `qk-study`: arguments, then `run.run_study` or `run.plan` |
"""
from qk_train.study.arms import (
    DEPTHS,
    EDIT_WEIGHTS,
    PROBE_BACKGROUND,
    PROBE_PAIRS,
    SMOKE_MIN_EDITS,
    SMOKE_MIN_STEPS,
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
from qk_train.study.cli import DEFAULT_JSON, main
from qk_train.study.report import (
    METRIC_NOTES,
    TABLE_COLUMNS,
    arm_entry,
    markdown,
    seed_figures,
    seed_stats,
    write_study,
)
from qk_train.study.run import (
    EVAL_VERSION,
    STABILITY_SEED_STRIDE,
    background_edits,
    details_pass,
    evaluate_arm,
    gate_overlap,
    measure_sample_times,
    measure_step_times,
    plan,
    probe_pair_edits,
    run_study,
    step_rates,
    train_member,
)
from qk_train.study.verdicts import claims

__all__ = [
    "DEFAULT_JSON",
    "DEPTHS",
    "EDIT_WEIGHTS",
    "EVAL_VERSION",
    "METRIC_NOTES",
    "PROBE_BACKGROUND",
    "PROBE_PAIRS",
    "SMOKE_MIN_EDITS",
    "SMOKE_MIN_STEPS",
    "SMOKE_WARNING",
    "STABILITY_SEED_STRIDE",
    "TABLE_COLUMNS",
    "Arm",
    "Member",
    "Options",
    "StudyError",
    "arm_entry",
    "background_edits",
    "build_arms",
    "claims",
    "details_pass",
    "dual_sizing",
    "evaluate_arm",
    "gate_overlap",
    "main",
    "markdown",
    "measure_sample_times",
    "measure_step_times",
    "member_config",
    "plan",
    "probe_pair_edits",
    "run_study",
    "seed_figures",
    "seed_stats",
    "select_arms",
    "smoke_reasons",
    "step_rates",
    "train_member",
    "trainable_parameters",
    "write_study",
]

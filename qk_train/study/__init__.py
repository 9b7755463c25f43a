"""qk-study: test the Query-Kontext study's claims with ablations trained on one budget
(`qk-study --help`, or `cli.py`'s docstring, says what it runs and writes).

| module | what |
|---|---|
| `arms.py` | the arms and their models' config changes, the dual pipeline's sizing, the options, smoke runs |
| `run.py` | training and evaluating every arm per seed (resumable, from the stored evaluations alone where the models are gone), the whole study run, `--plan` |
| `report.py` | per-seed figures, their spread and 95 % intervals (the JSON's arm entries), the markdown tables, writing both |
| `stats.py` | 95 % intervals: a two-level bootstrap over training seeds and test items, for one arm or a paired comparison |
| `verdicts.py` | the article's claims, each with its figure, ours with its interval, and a verdict by the interval rule |
| `cli.py` | `qk-study`: arguments, then `run.run_study` or `run.plan` |
"""
from qk_train.study.arms import Arm, Options, StudyError, build_arms, dual_sizing
from qk_train.study.cli import DEFAULT_JSON, main
from qk_train.study.report import TABLE_COLUMNS, markdown, seed_stats, write_study
from qk_train.study.run import plan, run_study
from qk_train.study.verdicts import VERDICT_RULE, claims

# the package's public names; the rest live in their modules (qk_train.study.arms, .run, ...)
__all__ = ["DEFAULT_JSON", "TABLE_COLUMNS", "VERDICT_RULE", "Arm", "Options", "StudyError", "build_arms", "claims", "dual_sizing",
           "main", "markdown", "plan", "run_study", "seed_stats", "write_study"]

"""The search: Optuna picks the steering configuration on val; `verdict` tests it once on test.

    import steerlight.search
    study = steerlight.search.search("configs/debug.yaml", n_trials=20,
                                     overrides={"data.limit_val": 40})
    results = steerlight.search.verdict(study_name=study.study_name)

`python -m steerlight.search` is the same as a command line. Modules: `space` (YAML -> Optuna
distributions), `objective` (a trial is a `fit`), `workers` (several processes on one study),
`artefacts` (the study folder's files), `study` (options and the study loop), `command` (CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["search", "verdict"]


def search(config: str | Path | dict = "configs/debug.yaml", **kwargs: Any):
    """Run a search and return its `optuna.Study` (see `steerlight.search.command.search`)."""
    from steerlight.console import lightning_as_log_records
    from steerlight.search.command import search as run

    with lightning_as_log_records():
        return run(config, **kwargs)


def verdict(
    ckpt: str = "best",
    *,
    study_name: str | None = None,
    root: str | Path = "lightning_logs",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`steerlight test --ckpt ...` from Python: the verdict that this run's own
    final_results.json holds (in a new verdicts/NNN folder; earlier verdicts are kept).

    `overrides` are dotted keys as on the command line (``{"data.limit_test": 50}``).
    """
    import json

    from steerlight.cli import cli_main
    from steerlight.console import lightning_as_log_records
    from steerlight.layout import RESULTS

    argv = ["test", "--ckpt", ckpt, "--root", str(root), "--trainer.enable_progress_bar=false"]
    argv += ["--study-name", study_name] if study_name else []
    for key, value in (overrides or {}).items():
        argv.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
    with lightning_as_log_records():
        cli = cli_main(args=argv)
    return json.loads((cli.model.verdict_dir / RESULTS).read_text())

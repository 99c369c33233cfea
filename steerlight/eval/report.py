"""The verdict: steered vs. unsteered on the same test questions, its files and its table.

Each `test` run writes, into a new folder `verdicts/NNN/` beside the checkpoint it tested
(`verdicts/latest` names the newest; no verdict is ever overwritten), `final_results.json`
(accuracies, paired difference with a bootstrap 95% CI, McNemar's exact p, the steering
configuration), `predictions.jsonl` (one line per question, both models) and
`reproducibility.json`.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerlight.eval.stats import mcnemar_exact, paired_bootstrap_ci
from steerlight.io import write_json, write_text
from steerlight.layout import PREDICTIONS, REPRODUCIBILITY, RESULTS, mark_latest, new_verdict_dir

log = logging.getLogger(__name__)

MODES = ("strict", "flexible")


def verdict(records: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Both accuracies (strict and flexible), paired difference, CI and McNemar p per mode."""
    out: dict[str, Any] = {"questions": len(records)}
    for mode in MODES:
        base = [bool(r[f"baseline_correct_{mode}"]) for r in records]
        steer = [bool(r[f"steered_correct_{mode}"]) for r in records]
        diff, low, high = paired_bootstrap_ci(base, steer, seed=seed)
        only_base, only_steer, p = mcnemar_exact(base, steer)
        out[mode] = {
            "baseline_accuracy": sum(base) / len(base),
            "steered_accuracy": sum(steer) / len(steer),
            "difference": diff,
            "difference_ci95": [low, high],
            "mcnemar_p": p,
            "baseline_correct": sum(base),
            "steered_correct": sum(steer),
            "only_baseline_correct": only_base,
            "only_steered_correct": only_steer,
        }
    return out


def paired_record(
    ex_id: str, question: str, gold: str, completions: Mapping[str, str], form: str
) -> dict[str, Any]:
    """One question's outcome for each model (`baseline`, `steered`): the predictions.jsonl row."""
    from steerlight.answers import extract, is_correct

    record = {"id": ex_id, "question": question, "gold": gold}
    for name, text in completions.items():
        record[f"{name}_completion"] = text
        for mode in MODES:
            pred = extract(text, mode, form)
            record[f"{name}_extracted_{mode}"] = pred
            record[f"{name}_correct_{mode}"] = is_correct(pred, gold)
    return record


def write_verdict(
    out: Path,
    records: Sequence[Mapping[str, Any]],
    steering: Mapping[str, Any],
    setting: Mapping[str, Any],
    hparams: Mapping[str, Any],
    base_model: Mapping[str, Any],
    checkpoint: str | None,
    datamodule: Any,
) -> Path:
    """A test's verdict files in a new folder `out`/verdicts/NNN (returned, and printed with
    the table): what steered, the statistics, and the bundle that reproduces it (config, seeds,
    data and weights fingerprints, the search's best trial). `setting` is what the config says
    (resolved layer, alpha, strength), recorded also where it does not steer."""
    import os

    header = {
        "checkpoint": checkpoint,
        "model": hparams["model_name_or_path"],
        "method": hparams["method"],
        **setting,
        "steering": dict(steering),
    }
    study = out / "best.json"  # written by the search beside best.ckpt
    reproducibility = {
        "model_hparams": dict(hparams),
        "data_hparams": dict(getattr(datamodule, "hparams", {})),
        "seed_everything": os.environ.get("PL_GLOBAL_SEED"),
        "test_data_fingerprint": getattr(datamodule, "fingerprints", {}).get("test"),
        "data_fingerprint": getattr(datamodule, "fingerprint", None),
        "base_model": dict(base_model),
        "study": json.loads(study.read_text()) if study.is_file() else None,
    }
    folder = new_verdict_dir(out)
    write_text(folder / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in records))
    results = {**header, **verdict(records, seed=hparams["seed"])}
    write_json(folder / REPRODUCIBILITY, {**reproducibility, "environment": environment()})
    write_json(folder / RESULTS, results)  # last: a folder with it is complete
    mark_latest(folder)
    log.info(format_verdict(results, folder / RESULTS))
    return folder


def format_verdict(results: Mapping[str, Any], path: Path | str | None = None) -> str:
    """The verdict as a table in the style of lm-evaluation-harness, then the configuration."""
    rows = [("match", "baseline", "steered", "difference [95% CI]", "McNemar p", "n")]
    for mode in MODES:
        r = results[mode]
        low, high = r["difference_ci95"]
        rows.append(
            (
                mode,
                f"{r['baseline_accuracy']:.4f}",
                f"{r['steered_accuracy']:.4f}",
                f"{r['difference']:+.4f} [{low:+.4f}, {high:+.4f}]",
                f"{r['mcnemar_p']:.4g}",
                str(results["questions"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "|" + "|".join(f" {c:<{w}} " for c, w in zip(row, widths, strict=True)) + "|"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    steering = results.get("steering", {})
    params = ", ".join(f"{k}={_short(v)}" for k, v in steering.items())
    lines.append(f"steering: {params}" if params else "steering: none")
    if path is not None:
        lines.append(f"results: {path}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def environment() -> dict[str, Any]:
    """Library versions, the git commit and whether the work tree had uncommitted changes."""
    import datasets
    import lightning
    import optuna
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lightning": lightning.__version__,
        "optuna": optuna.__version__,
        "datasets": datasets.__version__,
        "cuda": torch.version.cuda,
        **_git(),
    }


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}

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
from typing import TYPE_CHECKING, Any

from steerlight.eval.stats import mcnemar_exact, min_detectable_difference, paired_bootstrap_ci
from steerlight.io import write_json, write_text
from steerlight.layout import PREDICTIONS, REPRODUCIBILITY, RESULTS, mark_latest, new_verdict_dir

if TYPE_CHECKING:
    from steerlight.steering.apply import SteeringConfig

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
            "min_detectable_difference": min_detectable_difference(base, steer),
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
    if all("baseline_tokens" in r for r in records):
        out["answers"] = _answer_lengths(records)
    return out


def _answer_lengths(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What steering can move where accuracy cannot: generated tokens per answer and the
    answers that ran to the token cap, per model, with McNemar's p for the change in capped
    answers (paired, like the accuracies)."""
    out: dict[str, Any] = {}
    for name in ("baseline", "steered"):
        tokens = sum(r[f"{name}_tokens"] for r in records) / len(records)
        capped = sum(bool(r[f"{name}_at_cap"]) for r in records) / len(records)
        out[name] = {"tokens_per_answer": tokens, "at_token_cap": capped}
    capped = [[bool(r[f"{name}_at_cap"]) for r in records] for name in ("baseline", "steered")]
    out["at_token_cap_mcnemar_p"] = mcnemar_exact(*capped)[2]
    return out


def paired_record(
    ex_id: str,
    question: str,
    gold: str,
    completions: Mapping[str, str],
    form: str,
    tokens: Mapping[str, int] | None = None,
    cap: int | None = None,
) -> dict[str, Any]:
    """One question's outcome for each model (`baseline`, `steered`): the predictions.jsonl row.
    `tokens`: each model's generated tokens, and whether that reached the token `cap`."""
    from steerlight.answers import extract, is_correct

    record = {"id": ex_id, "question": question, "gold": gold}
    for name, text in completions.items():
        record[f"{name}_completion"] = text
        if tokens is not None:
            record[f"{name}_tokens"] = int(tokens[name])
            record[f"{name}_at_cap"] = cap is not None and int(tokens[name]) >= cap
        for mode in MODES:
            pred = extract(text, mode, form)
            record[f"{name}_extracted_{mode}"] = pred
            record[f"{name}_correct_{mode}"] = is_correct(pred, gold)
    return record


def paired_records(
    batch: Mapping[str, Any],
    generations: Mapping[str, Any],
    form: str,
    pad_id: int,
    cap: int | None,
) -> list[dict[str, Any]]:
    """The predictions.jsonl rows of one test batch: each question's `paired_record` from each
    model's `Generation` (its text and its generated tokens, against the token `cap`)."""
    lengths = {name: gen.lengths(pad_id).tolist() for name, gen in generations.items()}
    return [
        paired_record(
            ex_id,
            batch["questions"][i],
            batch["golds"][i],
            {name: gen.texts[i] for name, gen in generations.items()},
            form,
            {name: n[i] for name, n in lengths.items()},
            cap,
        )
        for i, ex_id in enumerate(batch["ids"])
    ]


def verdict_root(trainer: Any) -> Path:
    """Where a test's verdicts go (verdicts/NNN): beside the checkpoint tested, else the log
    folder (`trainer.log_dir` is a collective under DDP: every rank asks)."""
    if trainer.ckpt_path:
        return Path(trainer.ckpt_path).parent
    return Path(trainer.log_dir or trainer.default_root_dir)


def write_verdict(
    out: Path,
    records: Sequence[Mapping[str, Any]],
    config: SteeringConfig,
    hparams: Mapping[str, Any],
    base_model: Mapping[str, Any],
    trainer: Any,
) -> Path:
    """A test's verdict files in a new folder `out`/verdicts/NNN (returned, and printed with
    the table): what steered (`config`: the method's summary, and what the config says -
    resolved layer, alpha, strength - also where it does not steer), the statistics, and the
    bundle that reproduces it (config, seeds, data and weights fingerprints, the search's best
    trial) from the `trainer` that tested: its checkpoint and data module."""
    import os

    steering = {"method": config.method, **config.summary()}
    setting, checkpoint, datamodule = config.record(), trainer.ckpt_path, trainer.datamodule
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
    rows = [("match", "baseline", "steered", "difference [95% CI]", "McNemar p", "n", "MDE")]
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
                f"{r.get('min_detectable_difference', float('nan')):.4f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "|" + "|".join(f" {c:<{w}} " for c, w in zip(row, widths, strict=True)) + "|"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if "answers" in results:
        a = results["answers"]
        lines.append(
            f"tokens per answer: baseline {a['baseline']['tokens_per_answer']:.1f}, steered "
            f"{a['steered']['tokens_per_answer']:.1f}; at the token cap: baseline "
            f"{a['baseline']['at_token_cap']:.1%}, steered {a['steered']['at_token_cap']:.1%} "
            f"(McNemar p {a['at_token_cap_mcnemar_p']:.4g})"
        )
    lines.append("MDE: the smallest difference n paired questions detect (5% two-sided, 80% power)")
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

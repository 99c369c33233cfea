"""Part ``pruning``: a seeded `steerlight.search` with the median pruner vs without a pruner.

Both studies run the same trials of the same space on the trained tiny model; the figure is
their generated tokens. The pruner is the search's default (median, acting from the first
completed trial on: the unsteered baseline). Target >= 45% fewer tokens, best val accuracy
within one question.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench_models import data_config
from common import Result, quiet_lightning, working_folder

SEARCH_SPACE = {
    "method": ["caa", "dac"],
    "layer": {"probe_top_k": 3},
    "positions": ["prompt_end+generated", "all"],
    "when": {
        "caa": {"alpha": {"low": -3.0, "high": 3.0}},
        "dac": {
            "dac.alpha_max": {"low": 0.5, "high": 4.0},
            "dac.top_p": {"low": 0.5, "high": 0.95},
        },
    },
}
"""The space of configs/debug.yaml, fixed here so the benchmark does not move with that file."""


def search_config(args: argparse.Namespace, tiny: str, cache_dir: Path) -> dict:
    """The run config of both studies (configs/debug.yaml's, on the bench's model and sizes)."""
    return {
        "seed_everything": args.seed,
        "trainer": {
            "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "model_name_or_path": tiny,
            "dtype": args.dtype,
            "method": "caa",
            "layer": "auto",
            "alpha": 0.0,
            "normalization": "mean_norm",
            "generation": {"max_new_tokens": args.search_max_new_tokens},
            "seed": args.seed,
            "cache_dir": str(cache_dir),
            "log_samples": 0,
        },
        "data": data_config(args, args.search_val, args.trial_batch),
        "search": SEARCH_SPACE,
    }


def run_search(args: argparse.Namespace, tiny: str, workdir: Path, pruner: str) -> dict:
    """One `steerlight.search` study; its generated tokens, best value and wall time."""
    import optuna

    from steerlight.search import search

    folder = workdir / pruner
    folder.mkdir(parents=True)
    # Each study its own activation cache: both pay the same one-off fit.
    config = search_config(args, tiny, folder / "cache")
    start = time.perf_counter()
    with quiet_lightning(), working_folder(folder):  # nothing lands in the caller's folder
        study = search(
            config,
            root=str(folder / "logs"),
            study_name="bench",
            n_trials=args.trials,
            rounds=args.rounds,
            pruner=pruner,
            seed=args.seed,
        )
    wall = time.perf_counter() - start
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "wall_s": wall,
        "generated_tokens": sum(int(t.user_attrs.get("generated_tokens", 0)) for t in study.trials),
        "best_val_acc": max((t.value for t in complete), default=float("nan")),
        "states": {s: states.count(s) for s in sorted(set(states))},
        "tokens_per_trial": [int(t.user_attrs.get("generated_tokens", 0)) for t in study.trials],
    }


def bench_pruning(args: argparse.Namespace, tiny: str, what: str) -> Result:
    """Part 5: the same seeded search with the median pruner and without a pruner."""
    from steerlight.search.study import SearchOptions

    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    try:
        pruned = run_search(args, tiny, workdir, "median")
        full = run_search(args, tiny, workdir, "none")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = pruned["generated_tokens"] / max(1, full["generated_tokens"])
    saving = 1 - ratio
    gap_questions = (full["best_val_acc"] - pruned["best_val_acc"]) * args.search_val
    return Result(
        "pruning",
        f"Pruning: a {args.trials}-trial search with and without the median pruner",
        ratio,
        "generated tokens with the pruner / without",
        "<= 0.55 (>= 45% fewer tokens), best val acc within 1 question",
        saving >= 0.45 and gap_questions <= 1 + 1e-9,
        f"{pruned['generated_tokens']} vs {full['generated_tokens']} tokens "
        f"({100 * saving:.0f}% fewer); best val acc {pruned['best_val_acc']:.3f} vs "
        f"{full['best_val_acc']:.3f}",
        {"search, median pruner": [pruned["wall_s"]], "search, no pruner": [full["wall_s"]]},
        {
            "model": what,
            "model_path": tiny,
            "trials": args.trials,
            "rounds": args.rounds,
            "val_questions": args.search_val,
            "max_new_tokens": args.search_max_new_tokens,
            "pruner_startup_trials": SearchOptions.pruner_startup_trials,
            "token_saving": saving,
            "best_val_gap_questions": gap_questions,
            "wall_ratio": pruned["wall_s"] / full["wall_s"],
            "median_pruner": pruned,
            "no_pruner": full,
        },
    )

"""The study loop: the search options, the Optuna study, this worker's trials, the summary.

`steerlight.search.search()` (the Python API) and `python -m steerlight.search` (the CLI) both
parse their input in `steerlight.search.command` and end in `run_search`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from steerlight.errors import SteerlightError, one_line
from steerlight.io import ensure_writable_dir
from steerlight.layout import (
    StudyFolder,
    best_steered_checkpoint,
    check_study_name,
    make_a_steering,
    unsteered_best,
)
from steerlight.search.artefacts import log_figures, write_artefacts
from steerlight.search.objective import Search
from steerlight.search.space import Space
from steerlight.search.workers import StudyWorker, open_storage

log = logging.getLogger("steerlight.search")

DEFAULT_CONFIG = "configs/debug.yaml"


@dataclass
class SearchOptions:
    """How the search runs (the run itself is the config's model/data/trainer sections)"""

    n_trials: int | None = None
    """Trials this worker runs at most (default: 50, or no limit with --max_trials); a resumed
    study adds these to the trials it has."""
    max_trials: int | None = None
    """Trials the whole study may hold, counted over every worker and every resumed run (a dead
    worker's retried trial counts once); the study ends with exactly this many."""
    rounds: int = 4
    """Val shards, one per epoch; the accuracy after each is the pruning signal."""
    space: str | None = None
    """A YAML search space file, instead of the config's `search:` section."""
    storage: str | None = None
    """Optuna storage URL (default: SQLite in <root>/<study>/study.db, for workers on one
    machine); a PostgreSQL URL (postgresql+psycopg2://user:pw@host/db) lets workers on several
    machines share one study."""
    sampler: Literal["tpe", "random"] = "tpe"
    """tpe: multivariate TPE; random: uniform random search."""
    pruner: Literal["median", "hyperband", "none"] = "median"
    """median: Optuna's MedianPruner; hyperband: HyperbandPruner; none: no pruning."""
    startup_trials: int = 5
    """Random trials before TPE starts modelling the results."""
    pruner_startup_trials: int = 1
    """Completed trials before the median pruner prunes. 1: trial 0, the unsteered baseline, is
    the first yardstick, so a trial worse than no steering stops after one round (5: 40% more
    generated tokens in the bench's 20-trial search, same best val accuracy)."""
    seed: int = 0
    """Seed of the sampler; the k-th worker to join a study (0, 1, ...) uses seed + k."""
    timeout: float | None = None
    """Stop starting trials after this many seconds."""
    heartbeat_interval: int = 60
    """Seconds between a running trial's heartbeats. A trial silent for twice this long belongs
    to a dead worker: it is marked FAIL and retried (up to 3 times) with the same parameters by
    the next worker that starts a trial."""
    study_name: str | None = None
    """The study (default: the config file's stem); the same name resumes it."""
    root: str = "lightning_logs"
    """The folder that holds the study folders."""

    def __post_init__(self) -> None:
        for name in ("n_trials", "max_trials", "rounds", "heartbeat_interval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SteerlightError(
                    f"--{name.replace('_', '-')} {value} is invalid: use 1 or more"
                )
        for name in ("startup_trials", "pruner_startup_trials"):
            if getattr(self, name) < 0:
                raise SteerlightError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} is invalid: use 0 or more"
                )
        if self.timeout is not None and not self.timeout > 0:
            raise SteerlightError(f"--timeout {self.timeout} is invalid: use a positive number")
        if self.study_name is not None:
            check_study_name(self.study_name)


SEARCH_ONLY = {f.name for f in dataclasses.fields(SearchOptions)} | {"search", "config"}
"""Keys of a parsed search command that are not part of the run config."""


def make_sampler(options: SearchOptions, seed: int):
    import optuna

    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: a worker's TPE treats the other workers' running trials as bad results,
    # so concurrent workers spread out instead of drawing near-identical configurations.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=options.startup_trials,
        )


def make_study(options: SearchOptions, name: str, storage):
    """Create the study, or load it when another worker (or an earlier run) created it."""
    import optuna

    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=options.pruner_startup_trials
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=options.rounds
        ),
        "none": optuna.pruners.NopPruner,
    }[options.pruner]()
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=make_sampler(options, options.seed),  # replaced once the worker has an index
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val/acc"])  # optuna-dashboard's label for the objective
        return study
    except Exception as err:
        if type(err).__module__.startswith(("sqlalchemy", "optuna.exceptions")):
            raise SteerlightError(
                f"cannot open Optuna study {name!r}: {one_line(str(err))}"
            ) from None
        raise


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def progress_line(study, trial) -> None:
    """One line per finished trial: number, parameters, value or state, elapsed."""
    import optuna

    secs = trial.duration.total_seconds() if trial.duration else float("nan")
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"val/acc {trial.value:.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        rounds = [v for v in trial.intermediate_values.values() if v == v]  # (NaN: the end)
        outcome = f"PRUNED after round {len(rounds)}"
    else:
        outcome = f"FAIL: {trial.user_attrs.get('error', 'see the log')}"
    retry = trial.system_attrs.get("failed_trial")
    again = f" (retry of trial {retry}, whose worker died)" if retry is not None else ""
    log.info(
        f"[{study.study_name}] trial {trial.number}{again}: {params} -> {outcome} ({secs:.1f}s)"
    )


@contextlib.contextmanager
def _optuna_verbosity(level: int) -> Iterator[None]:
    """Optuna's log level for the block, restored after (the API leaves it as it found it)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def prepare_study(search: Search, options: SearchOptions) -> tuple[Any, StudyWorker]:
    """Create study `search.folder.name`, or load it (another worker's, an earlier run's), and
    join it as a worker: its probes, its settings checked, this worker registered with its
    sampler seed, the unsteered baseline enqueued once. `study.optimize` runs on it next; the
    worker (whose lock the budget gate holds) is the caller's to close."""
    folder, space = search.folder, search.space
    if options.storage is None:  # the default storage lives in the study folder
        ensure_writable_dir(folder.path, "--root")
    # a --storage of its own is opened first: one that is refused leaves no folder behind
    storage = open_storage(options.storage or folder.storage_url, options.heartbeat_interval)
    ensure_writable_dir(folder.path, "--root")
    study = make_study(options, folder.name, storage)
    worker = StudyWorker(storage, folder.name)
    try:
        with _artefacts_on_interrupt(study, folder):
            if space.needs_probes:
                search.probe_auc = search.fit_probes()
            space.check_study(study, search.probe_auc)
            settings = comparable_settings(search.config, options)
            index, seed = worker.join(
                study, options.seed, partial(check_comparable, settings=settings)
            )
            study.sampler = make_sampler(options, seed)
            worker.enqueue_once(study, space.baseline(search.probe_auc), {"baseline": True})
            log.info(f"[{folder.name}] worker {search.worker} (#{index}, sampler seed {seed})")
            search.gate = worker.open_gate(options.max_trials)
    except BaseException:
        worker.close()
        raise
    return study, worker


def run_search(config: dict, space: Space, options: SearchOptions, name: str):
    """This worker's part of study `name`: trials until its budget, then the artefacts."""
    import optuna

    from steerlight.model.loading import reuse_loaded_models

    folder = StudyFolder(Path(options.root), name)
    options = dataclasses.replace(options, rounds=fitting_rounds(config, options.rounds, name))
    search = Search(config, space, folder, rounds=options.rounds)
    start = time.monotonic()
    # The progress line replaces Optuna's log; a FAIL trial's error is in it (and in
    # trials.csv), so Optuna's own traceback of it (a warning) is not shown.
    with _optuna_verbosity(optuna.logging.ERROR):
        with reuse_loaded_models():  # the frozen model, loaded once for the probes and trials
            study, worker = prepare_study(search, options)
            with worker, _artefacts_on_interrupt(study, folder):
                if search.gate.admit(study):
                    _optimize(
                        study,
                        search,
                        n_trials=options.n_trials or (None if options.max_trials else 50),
                        timeout=options.timeout,
                        catch=(Exception,),  # a failed trial is FAIL with its message
                        # the gate last: it holds the study lock until the next trial exists
                        callbacks=[
                            progress_line,
                            lambda s, t: write_artefacts(s, folder),
                            search.gate,
                        ],
                        gc_after_trial=True,
                    )
        log_figures(study, folder, search.probe_auc)
        write_artefacts(study, folder)
    _print_summary(study, folder, time.monotonic() - start)
    return study


@contextlib.contextmanager
def _artefacts_on_interrupt(study, folder: StudyFolder) -> Iterator[None]:
    """On Ctrl-C: the study's artefacts as they are, and how to resume."""
    try:
        yield
    except KeyboardInterrupt:
        write_artefacts(study, folder)
        log.info(
            f"[{folder.name}] interrupted: the running trial is FAIL ('interrupted'); the same "
            "command resumes the study"
        )
        raise


def _optimize(study, objective, **kwargs) -> None:
    """`study.optimize`, with a study file that cannot be written said in one line."""
    try:
        study.optimize(objective, **kwargs)
    except Exception as err:
        if "readonly database" in str(err) or "read-only" in str(err):
            raise SteerlightError(
                f"study {study.study_name!r}: its database is read-only ({one_line(str(err))[:200]}"
                "); make the study file writable or pass another --root / --storage"
            ) from None
        raise


COMPARABLE_DATA = (
    "source", "config_name", "preset", "n_shots", "exemplars_file", "val_size", "split_seed",
    "limit_val", "max_prompt_tokens", "synthetic_train_size", "synthetic_test_size",
)  # fmt: skip
COMPARABLE_MODEL = ("model_name_or_path", "revision", "dtype", "trust_remote_code", "generation")


def fitting_rounds(config: dict, rounds: int, name: str = "") -> int:
    """`rounds`, or fewer where a round (one val shard) would hold fewer questions than one
    generation batch (`data.batch_size`): such a round decodes slower than a whole batch."""
    import inspect

    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.model.batch_size import START

    defaults = inspect.signature(GSM8KDataModule).parameters
    data = config.get("data", {})
    val = data.get("val_size") or defaults["val_size"].default
    val = min(val, data.get("limit_val") or val)
    batch = data.get("batch_size") or defaults["batch_size"].default
    batch = START if batch == "auto" else batch  # (measured later: at least START)
    fitting = max(1, min(rounds, val // batch))
    if fitting < rounds:
        log.info(
            f"[{name}] {val} val questions at data.batch_size {batch}: {fitting} round(s) of "
            f"at least {batch} questions instead of --rounds {rounds}"
        )
    return fitting


def comparable_settings(config: dict, options: SearchOptions) -> dict[str, Any]:
    """What the study's values are measured over: the val questions, the model, the rounds."""
    from steerlight.model.generation import SPEED_ONLY

    data, model = config.get("data", {}), dict(config.get("model", {}))
    if isinstance(model.get("generation"), dict):
        model["generation"] = {k: v for k, v in model["generation"].items() if k not in SPEED_ONLY}
    return {
        **{f"data.{k}": data.get(k) for k in COMPARABLE_DATA},
        **{f"model.{k}": model.get(k) for k in COMPARABLE_MODEL},
        "rounds": options.rounds,
    }


def check_comparable(study, settings: dict[str, Any]) -> None:
    """Record the settings in a new study; refuse a resume whose values would not compare."""
    import json

    settings = json.loads(json.dumps(settings, default=str))  # as the storage returns them
    recorded = study.user_attrs.get("comparable")
    if recorded is None:
        study.set_user_attr("comparable", settings)
        return
    changed = [
        k for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k)
    ]
    if changed:
        what = "; ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise SteerlightError(
            f"study {study.study_name!r} was scored with other settings ({what}): its values "
            "would not compare with this run's; use the study's settings again, or another "
            "--study_name"
        )


def _print_summary(study, folder: StudyFolder, seconds: float) -> None:
    """The study's states, the best trial against the unsteered baseline, the next command."""
    name = folder.name
    states = [t.state.name for t in study.trials]
    summary = ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states)))
    log.info(
        f"[{name}] {len(states)} trials ({summary}) in {seconds:.0f}s; artefacts in {folder.path}"
    )
    try:
        best = study.best_trial
    except ValueError:
        log.info(f"[{name}] no trial completed")
        return
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
    baseline = next((t for t in study.trials if t.user_attrs.get("baseline")), None)
    versus = ""
    if baseline is not None and baseline.value is not None:
        versus = f" (unsteered baseline, trial {baseline.number}: {baseline.value:.4f})"
    log.info(f"[{name}] best: trial {best.number}, val/acc {best.value:.4f}{versus}; {params}")
    if not Path(best.user_attrs.get("checkpoint", "")).is_file():
        # Another machine's worker ran it: best.ckpt here is the best this machine holds.
        log.info(
            f"[{name}] trial {best.number}'s checkpoint is on worker "
            f"{best.user_attrs.get('worker', '?')} ({best.user_attrs.get('checkpoint')}); "
            f"give every worker one shared --root to have the study's best in {folder.path}"
        )
    root = "" if folder.root == Path("lightning_logs") else f" --root {folder.root}"
    unsteered = unsteered_best(folder.best_ckpt)
    if unsteered is None:
        log.info(f"[{name}] next: python -m steerlight test --ckpt best --study-name {name}{root}")
        return
    log.info(f"[{name}] {unsteered}")
    steered = best_steered_checkpoint(folder.best_ckpt)
    if steered is None:
        log.info(f"[{name}] next: {make_a_steering(folder.best_ckpt)}")
        return
    log.info(
        f"[{name}] next: python -m steerlight test --ckpt {steered} tests it anyway (`export "
        "--ckpt best` exports it); more trials (this command again with --n-trials 20) resume "
        "the study"
    )

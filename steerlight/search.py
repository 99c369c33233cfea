"""`python -m steerlight.search`: Optuna picks the steering configuration, scored on val.

Each trial is a `fit` built through the same LightningCLI classes as `python -m steerlight fit`,
with `optuna_integration.PyTorchLightningPruningCallback` added to its callbacks. The val split
is cut into fixed shards, one per epoch, and the accuracy over the shards seen so far is the
intermediate value the pruner judges. Activations and fitted vectors come from the on-disk
cache, the frozen model is loaded once per process, and unsteered generations are reused.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from steerlight.errors import SteerlightError, exit_on_error, one_line
from steerlight.io import copy_file, ensure_writable_dir, read_yaml, write_text
from steerlight.workers import (
    MAX_RETRY,
    StudyLock,
    TrialGate,
    fail_stale_trials,
    open_storage,
    register_worker,
    worker_id,
)

log = logging.getLogger("steerlight.search")

TWIN_POLL_S = 0.5
"""How often a trial waiting for another worker's identical trial checks on it."""
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_CONFIG = "configs/debug.yaml"


# -- the search space ---------------------------------------------------------------------------


@dataclass
class Space:
    """Search dimensions from YAML: `name: [choices]`, `name: {low, high[, log, step]}`, or a value.

    Names are `SteeredLM` arguments. `layer: {probe_top_k: N}` searches the N layers whose
    probes score best on train. `when: {method: {...}}` adds dimensions only for that method.
    """

    params: dict[str, Any]
    when: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], origin: str) -> Space:
        if not isinstance(spec, Mapping) or not spec:
            raise SteerlightError(f"{origin}: the search space must be a non-empty mapping")
        spec = dict(spec)
        when = spec.pop("when", None) or {}
        space = cls(spec, {str(k): dict(v) for k, v in when.items()})
        space.validate(origin)
        return space

    def validate(self, origin: str) -> None:
        import inspect

        from steerlight.module import SteeredLM

        valid = set(inspect.signature(SteeredLM.__init__).parameters) - {"self"}
        for group, params in [
            ("", self.params),
            *((f"when.{m}.", p) for m, p in self.when.items()),
        ]:
            for name, spec in params.items():
                if name not in valid:
                    raise SteerlightError(
                        f"{origin}: unknown search parameter {group}{name!r}; "
                        f"valid: {', '.join(sorted(valid))}"
                    )
                _check_dimension(f"{origin}: {group}{name}", spec)
                if not (isinstance(spec, Mapping) and "probe_top_k" in spec):
                    try:
                        _distribution(name, spec, None)
                    except SteerlightError as err:
                        raise SteerlightError(f"{origin}: {group}{err}") from None
        methods = self.params.get("method")
        for method in self.when:
            if methods is not None and method not in _as_list(methods):
                raise SteerlightError(f"{origin}: when.{method} names a method not searched")

    @property
    def needs_probes(self) -> bool:
        return any(
            isinstance(p.get("layer"), Mapping) and "probe_top_k" in p["layer"]
            for p in (self.params, *self.when.values())
        )

    def suggest(self, trial, probe_auc: list[float] | None) -> dict[str, Any]:
        """Draw one configuration: a dict of `SteeredLM` arguments."""
        values = {n: _suggest(trial, n, s, probe_auc) for n, s in self.params.items()}
        for name, spec in self.when.get(values.get("method", ""), {}).items():
            values[name] = _suggest(trial, name, spec, probe_auc)
        return values

    def distributions(self, probe_auc: list[float] | None) -> dict[str, Any]:
        """Every searched dimension's Optuna distribution (conditional ones included)."""
        dims = [*self.params.items(), *(i for p in self.when.values() for i in p.items())]
        out = {}
        for name, spec in dims:
            dist = _distribution(name, spec, probe_auc)
            if dist is not None:
                out[name] = dist
        return out

    def check_study(self, study, probe_auc: list[float] | None) -> None:
        """Refuse to resume a study whose trials drew a dimension from another distribution.

        Optuna would otherwise fail every later trial of the resumed study with a ValueError.
        """
        from optuna.distributions import check_distribution_compatibility

        new = self.distributions(probe_auc)
        for trial in study.get_trials(deepcopy=False):
            for name, old in trial.distributions.items():
                if name not in new:
                    continue
                try:
                    check_distribution_compatibility(old, new[name])
                except ValueError:
                    raise SteerlightError(
                        f"study {study.study_name!r} searched {name} over {_describe(old)}, "
                        f"this space has {_describe(new[name])}: use the study's space again, "
                        "or another --study-name for the new one"
                    ) from None

    def baseline(self, probe_auc: list[float] | None) -> dict[str, Any]:
        """Trial 0: the unsteered model (alpha = 0, method caa if searched), and the first
        choice of every other categorical dimension so that it is a valid configuration."""
        params = {}
        for name, spec in self.params.items():
            if isinstance(spec, list):
                params[name] = spec[0]
            elif isinstance(spec, Mapping) and "probe_top_k" in spec and probe_auc is not None:
                params[name] = _top_layers(probe_auc, spec["probe_top_k"])[0]
        if "caa" in _as_list(self.params.get("method", [])):
            params["method"] = "caa"
        return {**params, "alpha": 0.0}


def _describe(dist) -> str:
    """A distribution in the words of the YAML space: choices, or a range."""
    if hasattr(dist, "choices"):
        return f"choices {list(dist.choices)}"
    kind = "integers" if type(dist).__name__.startswith("Int") else "floats"
    extra = ", log" if dist.log else (f", step {dist.step}" if dist.step else "")
    return f"{kind} {dist.low}..{dist.high}{extra}"


def _as_list(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, list) else [spec]


def _check_dimension(where: str, spec: Any) -> None:
    if isinstance(spec, list) and not spec:
        raise SteerlightError(f"{where}: an empty list of choices")
    if isinstance(spec, Mapping):
        if "probe_top_k" in spec:
            k = spec["probe_top_k"]
            if not isinstance(k, int) or k < 1:
                raise SteerlightError(f"{where}: probe_top_k must be a positive integer, got {k!r}")
            return
        if set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
            raise SteerlightError(
                f"{where}: a range needs `low` and `high` (optional `log`, `step`); "
                f"got {dict(spec)}"
            )
        low, high = spec["low"], spec["high"]
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)):
            raise SteerlightError(f"{where}: low and high must be finite numbers")
        if low >= high:
            raise SteerlightError(f"{where}: low ({low}) must be below high ({high})")


def _top_layers(probe_auc: list[float], k: int) -> list[int]:
    """The k layers whose probes score best, in layer order."""
    return sorted(sorted(range(len(probe_auc)), key=lambda i: -probe_auc[i])[:k])


def _distribution(name: str, spec: Any, probe_auc: list[float] | None):
    """The Optuna distribution one dimension draws from, or None for a fixed value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, list):
        return CategoricalDistribution(spec)
    if isinstance(spec, Mapping) and "probe_top_k" in spec:
        if probe_auc is None:
            raise SteerlightError("layer: probe_top_k needs the probes fitted before the search")
        return CategoricalDistribution(_top_layers(probe_auc, spec["probe_top_k"]))
    if isinstance(spec, Mapping):
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        try:
            if (
                isinstance(low, int)
                and isinstance(high, int)
                and not isinstance(spec.get("step"), float)
            ):
                return IntDistribution(low, high, log=log, step=spec.get("step", 1))
            return FloatDistribution(low, high, log=log, step=spec.get("step"))
        except ValueError as err:  # e.g. log with step, or a non-positive log range
            raise SteerlightError(f"{name}: {err}") from None
    return None


def _suggest(trial, name: str, spec: Any, probe_auc: list[float] | None) -> Any:
    """One dimension's value for `trial`, through Optuna's suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    dist = _distribution(name, spec, probe_auc)
    if dist is None:
        return spec
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    suggest = trial.suggest_int if isinstance(dist, IntDistribution) else trial.suggest_float
    return suggest(name, dist.low, dist.high, step=dist.step, log=dist.log)


# -- config handling ----------------------------------------------------------------------------


def load_config(path: str | Path, space_file: str | Path | None) -> tuple[dict, Space]:
    """The run config (as `fit` reads it) and the search space (its `search:` or a space file)."""
    path = Path(path)
    if not path.is_file():
        raise SteerlightError(f"config file {path} does not exist")
    config = _read_yaml(path)
    spec = config.pop("search", None)
    origin = f"{path} (search:)"
    if space_file is not None:
        spec, origin = _read_yaml(Path(space_file)), str(space_file)
    if spec is None:
        raise SteerlightError(f"{path} has no `search:` section; add one or pass --space FILE")
    return config, Space.from_dict(spec, origin)


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SteerlightError(f"{path} must hold a YAML mapping")
    return data


def merge(base: Mapping, override: Mapping) -> dict:
    """A deep merge of two config mappings (override wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- the objective -------------------------------------------------------------------------------


@dataclass
class Search:
    """One study: the base config, the space and where its artefacts go."""

    config: dict
    space: Space
    study_dir: Path
    study_name: str
    rounds: int = 4
    probe_auc: list[float] | None = None
    memo: dict = field(default_factory=dict)
    gate: TrialGate | None = None
    worker: str = field(default_factory=worker_id)

    def trial_config(self, params: Mapping[str, Any], version: str) -> dict:
        data = self.config.get("data", {})
        return merge(
            self.config,
            {
                "model": dict(params),
                "data": {
                    "val_shards": self.rounds if self.rounds > 1 else data.get("val_shards", 1)
                },
                "trainer": {
                    "max_epochs": self.rounds,
                    "reload_dataloaders_every_n_epochs": 1,
                    "num_sanity_val_steps": 0,
                    "logger": {
                        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {
                            "save_dir": str(self.study_dir.parent),
                            "name": self.study_name,
                            "version": version,
                            "default_hp_metric": False,
                        },
                    },
                },
            },
        )

    def fit_probes(self) -> list[float]:
        """Fit (or load from cache) the train-split probes once, to rank layers for the space."""
        from steerlight.cli import cli_main

        config = merge(
            self.config,
            {
                "trainer": {
                    "limit_val_batches": 0,
                    "logger": False,
                    "enable_checkpointing": False,
                    "max_epochs": 1,
                },
                "model": {"alpha": 0.0},
            },
        )
        config["trainer"].pop("callbacks", None)
        cli = cli_main(args=config, run=False, checkpoint=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        return cli.model.steering["probe_auc"].tolist()

    def __call__(self, trial) -> float:
        import optuna
        from optuna_integration import PyTorchLightningPruningCallback

        from steerlight.cli import cli_main

        if self.gate is not None:
            self.gate.admitted()  # Optuna has created this trial: other workers may go on
        trial.set_user_attr("worker", self.worker)
        params = self.space.suggest(trial, self.probe_auc)
        twin = _finished_twin(trial)
        if twin is not None:
            trial.set_user_attr("duplicate_of", twin.number)
            if twin.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned(f"same configuration as trial {twin.number} (pruned)")
            return twin.value
        try:
            pruning = PyTorchLightningPruningCallback(trial, monitor="val/acc")
            cli = cli_main(
                args=self.trial_config(params, f"trial_{trial.number:04d}"),
                run=False,
                extra_callbacks=[pruning],
            )
            cli.model.generation_memo = self.memo
            try:
                cli.trainer.fit(cli.model, cli.datamodule)
            finally:
                trial.set_user_attr("generated_tokens", cli.model.generated_tokens)
            value = float(cli.trainer.callback_metrics["val/acc"])
            ckpt = cli.trainer.checkpoint_callback.last_model_path
            trial.set_user_attr("checkpoint", ckpt)
            trial.set_user_attr("config", self.trial_config(params, f"trial_{trial.number:04d}"))
            return value
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise


def _finished_twin(trial, poll_s: float = TWIN_POLL_S):
    """A finished trial of the same study with exactly these parameters, if any.

    Another worker may be evaluating the same configuration right now: then this trial waits
    for that one (if it started first, so two twins never wait for each other) and takes its
    result, instead of evaluating the configuration twice.
    """
    import optuna

    states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
    )
    while True:
        twins = [
            other
            for other in trial.study.get_trials(deepcopy=False, states=states)
            if other.number != trial.number and other.params == trial.params
        ]
        finished = [t for t in twins if t.state != optuna.trial.TrialState.RUNNING]
        if finished:
            return finished[0]
        if not any(t.number < trial.number for t in twins):
            return None
        time.sleep(poll_s)
        # If the twin's worker died, its trial turns FAIL (and is retried) rather than
        # keeping this one waiting; this trial then evaluates the configuration itself.
        fail_stale_trials(trial.study)


# -- artefacts -----------------------------------------------------------------------------------


def write_artefacts(study, search: Search) -> None:
    """trials.csv, and best.yaml + best.ckpt for `python -m steerlight test --ckpt best`."""
    import optuna

    search.study_dir.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "params", "duration", "user_attrs")
    )
    write_text(search.study_dir / "trials.csv", frame.to_csv(index=False))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    with_ckpt = [t for t in complete if Path(t.user_attrs.get("checkpoint", "")).is_file()]
    if not with_ckpt:
        return
    best = max(with_ckpt, key=lambda t: (t.value, -t.number))
    config = copy.deepcopy(best.user_attrs["config"])
    # best.yaml describes a plain run: the whole val split, no search-only trainer settings.
    config.get("data", {}).pop("val_shards", None)
    for key in ("max_epochs", "reload_dataloaders_every_n_epochs"):
        config.get("trainer", {}).pop(key, None)
    config["trainer"]["logger"]["init_args"]["version"] = "best"
    header = (
        f"# best of study {search.study_name!r}: trial {best.number}, val/acc {best.value:.4f}\n"
    )
    write_text(search.study_dir / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    copy_file(Path(best.user_attrs["checkpoint"]), search.study_dir / "best.ckpt")
    summary = {"study": search.study_name, "trial": best.number, "val_acc": best.value}
    write_text(search.study_dir / "best.json", json.dumps({**summary, "params": best.params}))


def log_figures(study, search: Search) -> None:
    """Val accuracy against alpha per method/layer, and Optuna's history and importance plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots
    from torch.utils.tensorboard import SummaryWriter

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return
    writer = SummaryWriter(str(search.study_dir / "summary"))
    try:
        fig, ax = plt.subplots(figsize=(6, 4))
        groups: dict[str, list[tuple[float, float]]] = {}
        for t in complete:
            if "alpha" in t.params:
                label = f"{t.params.get('method', 'caa')} layer {t.params.get('layer', 'auto')}"
                groups.setdefault(label, []).append((t.params["alpha"], t.value))
        for label, points in sorted(groups.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, "o-", label=label)
        ax.set(xlabel="alpha", ylabel="val accuracy (strict)", title=search.study_name)
        if groups:
            ax.legend(fontsize="small")
        writer.add_figure("search/val_acc_vs_alpha", fig)
        plots = {
            "search/optimization_history": optuna_plots.plot_optimization_history,
            "search/param_importances": optuna_plots.plot_param_importances,
        }
        for tag, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" notices, equal importances
                    writer.add_figure(tag, plot(study).figure)
            except (ValueError, RuntimeError) as err:  # e.g. too few trials for importances
                log.warning("no %s figure: %s", tag, err)
    finally:
        writer.close()
        plt.close("all")


# -- command line --------------------------------------------------------------------------------


def build_parser():
    from jsonargparse import ArgumentParser

    p = ArgumentParser(
        prog="python -m steerlight.search",
        description="Search steering configurations with Optuna; every trial is scored on val. "
        "Several workers (processes, machines) may share one study through --storage.",
        default_env=False,
        exit_on_error=False,  # errors become one line (errors.exit_on_error), not usage text
    )
    p.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help="The run config `fit` reads, with a `search:` section (the space).",
    )
    p.add_argument("--space", default=None, help="A YAML search space file, instead of `search:`.")
    p.add_argument(
        "--n-trials",
        "--n_trials",
        type=int | None,
        default=None,
        help="Trials this worker runs at most (default: 50, or no limit with --max-trials); "
        "a resumed study adds these to the trials it has.",
    )
    p.add_argument(
        "--max-trials",
        "--max_trials",
        type=int | None,
        default=None,
        help="Trials the whole study may hold, counted over every worker and every resumed "
        "run (a dead worker's retried trial counts once); each worker stops when they are "
        "used up, so the study ends with exactly this many.",
    )
    p.add_argument(
        "--study-name",
        "--study_name",
        default=None,
        help="Study name (default: the config file's stem); reusing one resumes it.",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: SQLite in <root>/<study>/study.db, for workers on "
        "one machine); a PostgreSQL URL such as postgresql+psycopg2://user:pw@host/db lets "
        "workers on several machines share one study.",
    )
    p.add_argument(
        "--heartbeat-interval",
        "--heartbeat_interval",
        type=int,
        default=60,
        help="Seconds between a running trial's heartbeats. A trial silent for twice this "
        f"long belongs to a dead worker: it is marked FAIL and retried (up to {MAX_RETRY} "
        "times) with the same parameters by the next worker that starts a trial.",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="Stop starting trials after this many seconds."
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="tpe: multivariate TPE (default); random: uniform random search.",
    )
    p.add_argument(
        "--pruner",
        choices=PRUNERS,
        default="median",
        help="median: MedianPruner (default); hyperband; none: no pruning.",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="Val shards, one per epoch; accuracy after each is the pruning signal.",
    )
    p.add_argument(
        "--startup-trials",
        "--startup_trials",
        type=int,
        default=5,
        help="Trials before the pruner and TPE start acting on results.",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the sampler; the k-th worker to join a study (0, 1, ...) uses seed + k.",
    )
    p.add_argument("--root", default="lightning_logs", help="Folder that holds the study folder.")
    p.add_argument("--verbose", action="store_true", help="Show the traceback of an error.")
    return p


def parse_args(argv: list[str] | None):
    """The command line, with a bad flag or value reported in one line."""
    from jsonargparse import ArgumentError

    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as err:
        raise SteerlightError(one_line(str(err))) from None
    for flag in ("n_trials", "max_trials", "rounds"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SteerlightError(f"--{flag.replace('_', '-')} {value} is invalid: use 1 or more")
    return args


def make_sampler(args, seed: int):
    import optuna

    if args.sampler == "random":
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
            n_startup_trials=args.startup_trials,
        )


def make_study(args, name: str, storage):
    """Create the study, or load it when another worker (or an earlier run) created it."""
    import optuna

    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=args.rounds
        ),
        "none": optuna.pruners.NopPruner,
    }[args.pruner]()
    try:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=make_sampler(args, args.seed),  # replaced once the worker has its index
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as err:
        if type(err).__module__.startswith(("sqlalchemy", "optuna.exceptions")):
            raise SteerlightError(
                f"cannot open Optuna study {name!r}: {one_line(str(err))}"
            ) from None
        raise


def progress_line(study, trial) -> None:
    """One line per finished trial: number, parameters, value or state, elapsed."""
    import optuna

    secs = trial.duration.total_seconds() if trial.duration else float("nan")
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"val/acc {trial.value:.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        steps = trial.intermediate_values
        outcome = f"PRUNED after round {max(steps) + 1 if steps else 0}"
    else:
        outcome = f"FAIL: {trial.user_attrs.get('error', 'see the log')}"
    retry = trial.system_attrs.get("failed_trial")
    again = f" (retry of trial {retry}, whose worker died)" if retry is not None else ""
    print(
        f"[{study.study_name}] trial {trial.number}{again}: {params} -> {outcome} ({secs:.1f}s)",
        flush=True,
    )


def run(argv: list[str] | None = None) -> Any:
    import optuna

    from steerlight.model.loading import reuse_loaded_models

    args = parse_args(argv)
    config, space = load_config(args.config, args.space)
    name = args.study_name or Path(args.config).stem
    study_dir = Path(args.root) / name
    ensure_writable_dir(study_dir, "--root")
    storage = open_storage(
        args.storage or f"sqlite:///{study_dir / 'study.db'}", args.heartbeat_interval
    )
    study = make_study(args, name, storage)
    search = Search(config, space, study_dir, name, rounds=args.rounds)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line replaces its log
    lock = StudyLock(storage, name)
    start = time.monotonic()
    try:
        with reuse_loaded_models():
            if space.needs_probes:
                search.probe_auc = search.fit_probes()
            space.check_study(study, search.probe_auc)
            index, seed = register_worker(study, lock, args.seed)
            study.sampler = make_sampler(args, seed)
            with lock:  # one baseline, however many workers start on an empty study
                if not study.get_trials(deepcopy=False):
                    study.enqueue_trial(
                        space.baseline(search.probe_auc), user_attrs={"baseline": True}
                    )
            print(f"[{name}] worker {search.worker} (#{index}, sampler seed {seed})", flush=True)
            search.gate = TrialGate(lock, args.max_trials)
            if search.gate.admit(study):
                n_trials = args.n_trials or (None if args.max_trials else 50)
                study.optimize(
                    search,
                    n_trials=n_trials,
                    timeout=args.timeout,
                    # a failed trial is FAIL with its message; the study goes on
                    catch=(Exception,),
                    # the gate last: it holds the study lock until the next trial exists
                    callbacks=[progress_line, lambda s, t: write_artefacts(s, search), search.gate],
                    gc_after_trial=True,
                )
    finally:
        lock.close()
    log_figures(study, search)
    write_artefacts(study, search)
    states = [t.state.name for t in study.trials]
    summary = ", ".join(f"{states.count(s)} {s.lower()}" for s in sorted(set(states)))
    print(
        f"[{name}] {len(states)} trials ({summary}) in {time.monotonic() - start:.0f}s; "
        f"artefacts in {study_dir}",
        flush=True,
    )
    try:
        best = study.best_trial
    except ValueError:
        print(f"[{name}] no trial completed", flush=True)
        return study
    print(
        f"[{name}] best: trial {best.number}, val/acc {best.value:.4f}, {best.params}", flush=True
    )
    if not Path(best.user_attrs.get("checkpoint", "")).is_file():
        # Another machine's worker ran it: best.ckpt here is the best this machine holds.
        print(
            f"[{name}] trial {best.number}'s checkpoint is on worker "
            f"{best.user_attrs.get('worker', '?')} ({best.user_attrs.get('checkpoint')}); "
            f"give every worker one shared --root to have the study's best in {study_dir}",
            flush=True,
        )
    return study


def main() -> None:
    exit_on_error("steerlight.search", run)


if __name__ == "__main__":
    main()

"""The study folder's contents: trials.csv, best.yaml/.json/.ckpt and the study's figures.

The paths come from `steerlight.layout.StudyFolder`; this module decides what goes in them.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import yaml

from steerlight.io import copy_file, write_text
from steerlight.layout import StudyFolder

log = logging.getLogger("steerlight.search")


def write_artefacts(study, folder: StudyFolder) -> None:
    """trials.csv, and best.yaml + best.ckpt for `python -m steerlight test --ckpt best`."""
    import optuna

    folder.path.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "params", "duration", "user_attrs")
    )
    write_text(folder.trials_csv, frame.to_csv(index=False))
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
    header = f"# best of study {folder.name!r}: trial {best.number}, val/acc {best.value:.4f}\n"
    write_text(folder.best_yaml, header + yaml.safe_dump(config, sort_keys=False))
    copy_file(Path(best.user_attrs["checkpoint"]), folder.best_ckpt)
    summary = {"study": folder.name, "trial": best.number, "val_acc": best.value}
    steers = _steers(best)
    write_text(folder.best_json, json.dumps({**summary, "params": best.params, "steers": steers}))
    steered = [t for t in with_ckpt if _steers(t)]
    if steered:
        top = max(steered, key=lambda t: (t.value, -t.number))
        record = {
            "study": folder.name,
            "trial": top.number,
            "val_acc": top.value,
            "params": top.params,
            "describe": describe_steering(top.user_attrs["config"].get("model", {})),
            "checkpoint": str(Path(top.user_attrs["checkpoint"]).resolve()),
        }
        write_text(folder.best_steered_json, json.dumps(record))


def _steers(trial) -> bool:
    """Whether a trial's configuration steers: a method with a strength, and that strength != 0."""
    from steerlight.steering.method import get

    model = trial.user_attrs.get("config", {}).get("model", {})
    method = get(model.get("method", "caa"))
    return method.strength is not None and method.strength_of(model) != 0


def describe_steering(model: dict) -> str:
    """`caa at layer 2, alpha 0.8`: a trial's method, layer and strength in a few words."""
    from steerlight.steering.method import get

    name = model.get("method", "caa")
    method = get(name)
    strength = f", {method.strength} {method.strength_of(model):.3g}" if method.strength else ""
    return f"{name} at layer {model.get('layer', 'auto')}{strength}"


METHODS_PNG = "val_acc_by_method.png"
"""The study's strip plot of val accuracy per method, written beside trials.csv."""

IMPORTANCE_MIN_TRIALS = 10
"""Parameter importances from fewer complete trials are noise; below this, a note instead."""


def log_figures(study, folder: StudyFolder, probe_auc: list[float] | None = None) -> None:
    """The study's figures in TensorBoard (`<study>/summary`): val accuracy against strength per
    method x layer, val accuracy per method (also a PNG beside trials.csv), Optuna's history
    and, with enough complete trials, parameter importances."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots
    from torch.utils.tensorboard import SummaryWriter

    from steerlight.eval.figures import auc_figure, method_figure, strength_figure

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return
    writer = SummaryWriter(str(folder.summary))
    try:
        writer.add_figure("search/val_acc_vs_strength", strength_figure(complete, folder.name))
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        by_method = method_figure(study.get_trials(deepcopy=False, states=states), folder.name)
        folder.path.mkdir(parents=True, exist_ok=True)
        by_method.savefig(folder.path / METHODS_PNG, dpi=120)  # beside trials.csv
        writer.add_figure("search/val_acc_by_method", by_method)
        probe_auc = probe_auc or _probe_auc(folder.best_ckpt)
        if probe_auc:
            writer.add_figure("probes/auc_per_layer", auc_figure(probe_auc))
        plots = {"search/optimization_history": optuna_plots.plot_optimization_history}
        if len(complete) >= IMPORTANCE_MIN_TRIALS:
            plots["search/param_importances"] = optuna_plots.plot_param_importances
        else:
            writer.add_text(
                "search/param_importances",
                f"{len(complete)} complete trials: importances need {IMPORTANCE_MIN_TRIALS}+.",
            )
        for tag, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "experimental" notices, equal importances
                    figure = plot(study).figure
                figure.tight_layout()
                writer.add_figure(tag, figure)
            except (ValueError, RuntimeError) as err:  # e.g. a study with one dimension
                log.warning("no %s figure: %s", tag, err)
    finally:
        writer.close()


def _probe_auc(checkpoint: Path) -> list[float] | None:
    """The probes' AUC per layer that a checkpoint holds (the same for every trial)."""
    import torch

    if not checkpoint.is_file():
        return None
    steering = torch.load(checkpoint, map_location="cpu", weights_only=True).get("steering", {})
    return steering["probe_auc"].tolist() if "probe_auc" in steering else None

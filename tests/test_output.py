"""What a user sees: `fit` ends on one result line, `--help` lists every command, the Python API
prints nothing, TensorBoard opens on baseline vs steered and its HPARAMS tab leads with what was
steered how strongly, and optuna-dashboard never plots a pruned trial as a result."""

from __future__ import annotations

import copy
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SEARCH_BASE, subprocess_env

from steerlight.eval import figures


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """One folder with a tiny random Llama and its tokenizer (only that architecture)."""
    from random_models import build_tiny_model, build_tokenizer_dir

    path = tmp_path_factory.mktemp("llama") / "llama"
    build_tiny_model("llama", path)
    build_tokenizer_dir(path)
    return path


def run_config(tmp_path: Path, model: Path, **model_args) -> Path:
    """A seconds-long `fit` config on `model` with a TensorBoard logger and the progress bar."""
    config = copy.deepcopy(SEARCH_BASE)
    config["trainer"].update(
        enable_progress_bar=True,
        default_root_dir=str(tmp_path),
        logger={
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(tmp_path / "logs"), "name": "run"},
        },
    )
    config["model"].update(model_name_or_path=str(model), cache_dir=str(tmp_path / "cache"))
    config["model"].update(layer=1, **model_args)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def steerlight(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steerlight", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(COLUMNS="200"),
        timeout=600,
    )


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run's event files with its (step, value) points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def hparams_shown(log_dir: Path) -> tuple[list[str], list[str]]:
    """The HPARAMS columns TensorBoard shows by default: its backend sorts the hyperparameters
    (`_sort_and_reduce_to_hparams_limit`), its table shows the first five of them and of the
    metrics (tf-hparams-query-pane)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import backend_context, plugin_data_pb2

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    backend_context._sort_and_reduce_to_hparams_limit(experiment)
    names = [h.name for h in experiment.hparam_infos]
    return names[:5], [m.name.tag for m in experiment.metric_infos][:5]


def test_fit_ends_on_its_result_and_tensorboard_opens_on_it(llama, tmp_path):
    config = run_config(tmp_path, llama, alpha=0.0)
    proc = steerlight("fit", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("val/acc ") and lines[-1].endswith(
        "(strict exact match, 8 val questions)"
    ), lines[-3:]
    assert "v_num" not in proc.stdout + proc.stderr, "the logger's version is not a result"
    assert sum("val/acc" in line for line in lines) == 1, "one line holds the result"

    log_dir = tmp_path / "logs" / "run" / "version_0"
    points = scalars(log_dir)
    assert len(points["val/acc"]) == 1, "logged once, not again with the HPARAMS row"
    assert sorted(points)[:2] == ["acc/val_baseline", "acc/val_steered"], "the first card"
    # alpha 0 steers nothing: the baseline is this very run, at no extra cost
    assert points["acc/val_baseline"] == points["acc/val_steered"] == points["val/acc"]

    hparams, metrics = hparams_shown(log_dir)
    assert hparams[:3] == ["1 method", "2 layer", "3 strength"], hparams
    assert metrics[:2] == ["val/acc", "test/acc"], metrics
    saved = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert saved["generation"]["max_new_tokens"] == 3
    assert "alpha_max" in saved["dac"], "the DAC group too"

    # validate from the checkpoint: Lightning's "Loaded model weights" is reworded
    ckpt = next((log_dir / "checkpoints").glob("*.ckpt"))
    proc = steerlight("validate", "--config", str(config), "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout + proc.stderr
    assert "Loaded model weights" not in shown
    assert f"Loaded the steering state (no model weights) from {ckpt}" in shown


def test_help_lists_every_command_in_whole_sentences(tmp_path):
    from steerlight.__main__ import COMMANDS as OWN_PARSERS
    from steerlight.cli import COMMANDS

    proc = steerlight("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert set(OWN_PARSERS) <= set(COMMANDS)
    for name, line in COMMANDS.items():
        assert f"{name} {line}" in text, name
        assert line.endswith("."), f"{name}: {line!r} stops mid-sentence"
    assert "{" + ",".join(COMMANDS) + "}" in text


@pytest.mark.parametrize(
    ("hparams", "strength"),
    [
        ({"method": "caa", "layer": 2, "alpha": -1.5}, -1.5),
        ({"method": "dac", "layer": 2, "alpha": 0.0, "dac": {"alpha_max": 2.5}}, 2.5),
        ({"method": "none", "layer": 2, "alpha": 0.0}, 0.0),
    ],
)
def test_every_hparams_row_shows_its_strength(hparams, strength):
    columns = figures.hparams_columns({**hparams, "generation": {"max_new_tokens": 8}})
    assert list(columns)[0] == "1 method" and columns["1 method"] == hparams["method"]
    assert columns["3 strength"] == strength
    assert "alpha" not in columns, "the strength column is alpha (CAA) or dac.alpha_max (DAC)"
    assert columns["generation.max_new_tokens"] == 8


def test_an_hparams_row_takes_any_setting(tmp_path):
    """TensorBoard's HPARAMS plugin takes numbers, strings and booleans: others become text."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    figures.log_hparams(writer, {"1 method": "pca", "options.pair": (1, 2), "options.x": None})
    writer.close()
    assert hparams_shown(tmp_path)[0] == ["1 method", "options.pair", "options.x"]


def test_a_run_writes_its_hparams_row_once(tmp_path):
    """Every val round ends an epoch: the row is written at the first, not again at each."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for _ in range(3):
        figures.log_hparams(writer, {"1 method": "caa", "2 layer": 3})
    writer.close()
    (events,) = tmp_path.glob("events.out.tfevents.*")
    tags = [v.tag for e in EventFileLoader(str(events)).Load() for v in e.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1


def test_a_search_from_python_prints_nothing_and_compares_with_the_baseline(
    llama, tmp_path, monkeypatch, capfd
):
    import steerlight.search
    from steerlight.layout import StudyFolder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger("steerlight"), "handlers", [])  # a fresh notebook,
    for name in ("lightning.pytorch", "lightning.fabric"):  # where Lightning prints itself
        monkeypatch.setattr(logging.getLogger(name), "handlers", [logging.StreamHandler()])
        monkeypatch.setattr(logging.getLogger(name), "propagate", False)
    config = copy.deepcopy(SEARCH_BASE)
    config["model"].update(model_name_or_path=str(llama), cache_dir=str(tmp_path / "cache"))
    config["search"] = {"layer": [1], "alpha": {"low": -2.0, "high": 2.0}}
    root = tmp_path / "runs"
    study = steerlight.search.search(
        config, n_trials=2, rounds=2, study_name="quiet", root=str(root)
    )
    steered_ckpt = study.trials[1].user_attrs["checkpoint"]  # (trial 0 is the baseline)
    results = steerlight.search.verdict(steered_ckpt, study_name="quiet", root=root)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "the API prints nothing; it logs"
    assert results["questions"] == 4

    baseline, steered = study.trials
    folder = StudyFolder(root, "quiet")
    base = scalars(folder.path / StudyFolder.trial_version(baseline.number))
    mine = scalars(folder.path / StudyFolder.trial_version(steered.number))
    assert sorted(mine)[:2] == ["acc/val_baseline", "acc/val_steered"]
    # each round: this trial beside the baseline trial on the same val shards
    assert mine["acc/val_baseline"] == base["val/acc"] == base["acc/val_steered"]
    assert mine["acc/val_steered"] == mine["val/acc"]
    assert len(mine["val/acc"]) == 2, "one point per round"


def test_a_pruned_trial_ends_without_a_value(caplog):
    """Optuna would give it its last running accuracy, which optuna-dashboard plots."""
    from types import SimpleNamespace

    import optuna
    import torch

    from steerlight.search.objective import pruning_callback
    from steerlight.search.study import progress_line

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    def objective(trial) -> float:
        callback = pruning_callback(trial)
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={})
        trainer.callback_metrics["val/acc"] = torch.tensor(0.75)
        callback.on_validation_end(trainer, SimpleNamespace(current_epoch=0))
        return 0.5

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", pruner=Always())
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.value is None, "no value: optuna-dashboard's history leaves it out"
    assert trial.intermediate_values[0] == 0.75, "the round it was judged on stays"
    assert [s for s, v in trial.intermediate_values.items() if not math.isnan(v)] == [0]
    with caplog.at_level(logging.INFO, logger="steerlight"):
        progress_line(study, trial)
    assert "-> PRUNED after round 1 (" in caplog.text


def test_a_slow_step_says_what_it_is_doing(llama, tmp_path, caplog):
    """The line while a step decodes: questions done so far, then the step in progress."""
    from steerlight.cli import cli_main
    from steerlight.progress import PassProgress

    config = run_config(tmp_path, llama, alpha=1.0)
    args = ["fit", "--config", str(config), "--trainer.logger=false"]
    args += ["--trainer.enable_progress_bar=false"]
    with caplog.at_level(logging.INFO, logger="steerlight.progress"):
        cli_main(args, progress=None, extra_callbacks=[PassProgress(every_s=0.0)])
    lines = [r.getMessage() for r in caplog.records if "forward passes" in r.getMessage()]
    assert lines, "a line per forward while no row finishes (every_s=0)"
    assert all("questions done; still decoding a step of " in line for line in lines), lines[0]
    assert not any("the next" in line for line in lines)

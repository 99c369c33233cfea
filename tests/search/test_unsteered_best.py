"""A study whose best trial is the unsteered baseline: the search says so and names the best
steered trial, `test --ckpt best` refuses in one line before any work, and the probe choice of
layers can leave out layer 0 (which llama.cpp cannot steer). No model is loaded here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest

from steerlight.cli import cli_main
from steerlight.errors import SteerlightError
from steerlight.layout import StudyFolder, best_steered_checkpoint, unsteered_best
from steerlight.search.artefacts import write_artefacts
from steerlight.search.space import Space
from steerlight.search.study import _print_summary


def make_study(folder: StudyFolder, values: list[tuple[dict, float]]) -> optuna.Study:
    """A study of complete trials (model config, val/acc), each with a checkpoint file; the
    first is the unsteered baseline, as the search enqueues it."""
    study = optuna.create_study(direction="maximize")
    for number, (model, value) in enumerate(values):
        ckpt = folder.path / StudyFolder.trial_version(number) / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"a checkpoint")
        config = {"trainer": {"logger": {"init_args": {}}}, "model": model}
        attrs = {"config": config, "checkpoint": str(ckpt), "baseline": number == 0}
        params = {"layer": model["layer"], "alpha": model.get("alpha", 0.0)}
        dists = {
            "layer": optuna.distributions.CategoricalDistribution([1, 2, 3]),
            "alpha": optuna.distributions.FloatDistribution(-3.0, 3.0),
        }
        trial = optuna.trial.create_trial(
            params=params, distributions=dists, value=value, user_attrs=attrs
        )
        study.add_trial(trial)
    return study


BASELINE = {"method": "caa", "layer": 2, "alpha": 0.0}


def test_a_best_baseline_names_the_best_steered_trial(tmp_path, caplog):
    folder = StudyFolder(tmp_path / "logs", "study")
    study = make_study(
        folder,
        [
            (BASELINE, 0.40),
            ({"method": "caa", "layer": 1, "alpha": 0.8}, 0.35),
            ({"method": "caa", "layer": 3, "alpha": -1.5}, 0.38),
        ],
    )
    write_artefacts(study, folder)
    best = json.loads(folder.best_json.read_text())
    assert (best["trial"], best["steers"]) == (0, False)
    steered = json.loads(folder.best_steered_json.read_text())
    assert (steered["trial"], steered["val_acc"]) == (2, 0.38)
    assert steered["describe"] == "caa at layer 3, alpha -1.5"
    trial_2 = folder.path / "trial_0002" / "last.ckpt"
    assert best_steered_checkpoint(folder.best_ckpt) == trial_2.resolve()

    with caplog.at_level(logging.INFO, logger="steerlight.search"):
        _print_summary(study, folder, 12.0)
    lines = [r.getMessage() for r in caplog.records]
    assert "does not steer: no steered trial beat the unsteered baseline on val" in lines[-2]
    assert "best steered trial is 2 (val/acc 0.3800, caa at layer 3, alpha -1.5)" in lines[-2]
    assert lines[-1].startswith(
        f"[study] next: python -m steerlight test --ckpt {trial_2.resolve()} tests it anyway"
    )
    assert "(`export --ckpt best` exports it)" in lines[-1] and "--n-trials 20" in lines[-1]

    with pytest.raises(SteerlightError) as err:  # before any model or data is loaded
        cli_main(["test", "--ckpt", "best", "--root", str(folder.root), "--study_name", "study"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("--ckpt best: study 'study''s best trial")
    assert "best steered trial is 2" in message
    assert message.endswith(f"test it anyway with --ckpt {trial_2.resolve()}")


def test_without_a_completed_steered_trial_it_says_so(tmp_path, caplog):
    folder = StudyFolder(tmp_path / "logs", "study")
    study = make_study(folder, [(BASELINE, 0.40)])
    write_artefacts(study, folder)
    assert not folder.best_steered_json.exists()
    none = "and none completed (pruned below it, or failed)"
    assert unsteered_best(folder.best_ckpt).endswith(none)
    with caplog.at_level(logging.INFO, logger="steerlight.search"):
        _print_summary(study, folder, 3.0)
    fit = f"python -m steerlight fit --config {folder.best_yaml} --model.alpha 1, then --ckpt last"
    last = caplog.records[-1].getMessage()
    assert last.startswith("[study] next: run more trials (the search command again with --n-tri")
    assert last.endswith(fit)
    with pytest.raises(SteerlightError, match="and none completed") as err:
        cli_main(["test", "--ckpt", "best", "--root", str(folder.root), "--study_name", "study"])
    assert str(err.value).endswith(fit)


def test_a_steered_best_changes_nothing(tmp_path, caplog):
    folder = StudyFolder(tmp_path / "logs", "study")
    study = make_study(folder, [(BASELINE, 0.40), ({**BASELINE, "alpha": 0.5}, 0.45)])
    write_artefacts(study, folder)
    assert json.loads(folder.best_json.read_text())["steers"] is True
    assert unsteered_best(folder.best_ckpt) is None
    with caplog.at_level(logging.INFO, logger="steerlight.search"):
        _print_summary(study, folder, 3.0)
    assert caplog.records[-1].getMessage() == (
        "[study] next: python -m steerlight test --ckpt best --study-name study "
        f"--root {folder.root}"
    )


def test_probe_layers_can_leave_out_layer_0():
    auc = [0.9, 0.6, 0.8, 0.7]  # layer 0 separates best (few train questions)
    top = Space.from_dict({"layer": {"probe_top_k": 2}, "alpha": [0.0, 1.0]}, "space")
    assert top.distributions(auc)["layer"].choices == (0, 2)
    later = Space.from_dict({"layer": {"probe_top_k": 2, "min_layer": 1}, "alpha": [1.0]}, "s")
    assert later.distributions(auc)["layer"].choices == (2, 3)
    assert later.baseline(auc)["layer"] == 2
    for bad in ({"probe_top_k": 2, "min_layer": -1}, {"probe_top_k": 2, "from": 1}):
        with pytest.raises(SteerlightError, match="optional min_layer"):
            Space.from_dict({"layer": bad}, "space")
    past = Space.from_dict({"layer": {"probe_top_k": 1, "min_layer": 4}}, "space")
    with pytest.raises(SteerlightError, match="min_layer 4 leaves none of the model's 4 layers"):
        past.distributions(auc)


def test_the_readme_configs_search_layers_every_export_target_takes():
    import yaml

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("debug.yaml", "gsm8k.yaml"):
        layer = yaml.safe_load((root / name).read_text())["search"]["layer"]
        assert layer.get("min_layer", 0) >= 1, f"{name}: gguf cannot hold layer 0"

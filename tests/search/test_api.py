"""The search and the verdict from Python, on the embedded tiny model (as from a notebook)."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
import yaml
from conftest import ROOT

import steerlight.search
from steerlight.errors import SteerlightError
from steerlight.layout import StudyFolder, best_steered_checkpoint, latest_verdict


def test_search_and_verdict_from_python(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    config["model"]["cache_dir"] = str(tmp_path / "cache")
    config["model"]["generation"]["max_new_tokens"] = 48
    config["trainer"]["enable_progress_bar"] = False
    config["search"] = {"layer": [2], "alpha": {"low": -2.0, "high": 2.0}}
    optuna.logging.set_verbosity(optuna.logging.INFO)
    root = tmp_path / "runs"
    # as in a fresh notebook: no command line in this process has shown steerlight's log
    monkeypatch.setattr(logging.getLogger("steerlight"), "handlers", [])

    study = steerlight.search.search(
        config,
        overrides={"data.limit_val": 16, "data.limit_train": 32, "data.batch_size": 16},
        n_trials=3,
        rounds=2,
        study_name="api",
        root=str(root),
        pruner="none",  # steered trials complete: one is there to test if the baseline wins
    )

    assert isinstance(study, optuna.Study) and study.study_name == "api"
    assert len(study.trials) == 3
    assert study.trials[0].params == {"layer": 2, "alpha": 0.0}, "trial 0 is the baseline"
    assert optuna.logging.get_verbosity() == optuna.logging.INFO, "Optuna's level left as found"
    assert study.metric_names == ["val/acc"]
    folder = StudyFolder(root, "api")
    assert folder.best_ckpt.is_file() and folder.trials_csv.is_file()
    assert yaml.safe_load(folder.best_yaml.read_text())["model"]["layer"] == 2
    assert capsys.readouterr().out == "", "the API prints nothing; it logs"

    sizes = {"data.limit_test": 12}
    ckpt, tested = "best", folder.path
    if study.best_trial.params["alpha"] == 0.0:  # the baseline won on val: best is refused
        with pytest.raises(SteerlightError, match="does not steer"):
            steerlight.search.verdict(study_name="api", root=root, overrides=sizes)
        steered = best_steered_checkpoint(folder.best_ckpt)
        ckpt, tested = str(steered), steered.parent
    results = steerlight.search.verdict(ckpt, study_name="api", root=root, overrides=sizes)
    assert results["questions"] == 12
    verdict = latest_verdict(tested)
    assert results == json.loads((verdict / "final_results.json").read_text())
    assert results["steering"]["method"] == "caa"
    assert results["steering"]["steers"] is True
    for mode in ("strict", "flexible"):
        assert 0.0 <= results[mode]["steered_accuracy"] <= 1.0
        assert len(results[mode]["difference_ci95"]) == 2
    first = (verdict / "final_results.json").read_bytes()
    steerlight.search.verdict(ckpt, study_name="api", root=root, overrides=sizes)
    again = latest_verdict(tested)
    assert again != verdict and (verdict / "final_results.json").read_bytes() == first, "kept"
    assert (again / "final_results.json").read_bytes() == first, "byte-identical"
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_command_line_shows_what_the_api_logs(tmp_path, caplog):
    """The per-trial lines are log records: a command line shows them, the API does not."""
    from steerlight.search.study import progress_line

    study = optuna.create_study(study_name="s", direction="maximize")
    study.enqueue_trial({"alpha": 0.0})
    study.optimize(lambda t: t.suggest_float("alpha", -1, 1) + 0.5, n_trials=1)
    with caplog.at_level(logging.INFO, logger="steerlight"):
        progress_line(study, study.trials[0])
    assert "[s] trial 0: alpha=0 -> val/acc 0.5000" in caplog.text

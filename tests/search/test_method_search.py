"""One search across every registered method: each trial steers with its own method and settings."""

from __future__ import annotations

import json

import optuna
from conftest import write_search_config
from test_search import images, search

from steerlight.steering.method import names


def test_one_search_over_every_method(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    methods = [m for m in names() if m != "none"]
    alpha = {"low": -4.0, "high": 4.0}
    space = {
        "method": methods,
        "layer": [0],
        "when": {
            **{m: {"alpha": alpha} for m in methods if m != "dac"},
            "pca": {"alpha": alpha, "options.center": ["pca_diff", "pca_center"]},
            "conditional": {"alpha": alpha, "options.threshold": {"low": 0.1, "high": 0.9}},
            "dac": {"dac.alpha_max": {"low": 0.5, "high": 2.0}},
        },
    }
    config = write_search_config(tmp_path, tiny_llama_dir, space)
    study = search(tmp_path, config, "--n-trials", "10", "--sampler", "random", "--pruner", "none")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == len(study.trials), [t.user_attrs.get("error") for t in study.trials]
    assert len({t.params["method"] for t in done}) >= 3
    for t in done:  # a method's own settings only in its trials
        assert ("options.threshold" in t.params) == (t.params["method"] == "conditional")
        assert ("options.center" in t.params) == (t.params["method"] == "pca")
    study_dir = tmp_path / "lightning_logs" / "study"
    best = json.loads((study_dir / "best.json").read_text())
    assert best["params"]["method"] in methods
    assert (study_dir / "val_acc_by_method.png").stat().st_size > 0
    assert "search/val_acc_by_method" in images(study_dir / "summary")

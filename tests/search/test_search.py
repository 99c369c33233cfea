"""`python -m steerlight.search` on a tiny random model: states, resume, artefacts, --ckpt best."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import subprocess_env, write_search_config

from steerlight.errors import SteerlightError
from steerlight.layout import best_steered_checkpoint, latest_verdict
from steerlight.search.command import parse_argv, run


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> Path:
    return tiny_llama_dir


def search(tmp_path: Path, config: Path, *flags: str) -> optuna.Study:
    root = tmp_path / "lightning_logs"
    return run(["--config", str(config), "--root", str(root), "--rounds", "2", *flags])


def test_trial_states_artefacts_and_resume(llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"method": ["caa"], "layer": [0, 9], "alpha": {"low": -4.0, "high": 4.0}}
    config = write_search_config(tmp_path, llama, space)
    study = search(tmp_path, config, "--n-trials", "6", "--sampler", "random")
    trials = study.trials
    assert trials[0].params["alpha"] == 0.0 and trials[0].user_attrs["baseline"] is True
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "layer 9 of a 2-layer model must fail"
    for t in failed:
        assert t.params["layer"] == 9
        assert "layer 9 is out of range" in t.user_attrs["error"]
        assert t.value is None  # never a fake score
    study_dir = tmp_path / "lightning_logs" / "study"
    for name in ("study.db", "trials.csv", "best.yaml", "best.ckpt", "best.json"):
        assert (study_dir / name).is_file(), name
    assert len((study_dir / "trials.csv").read_text().strip().splitlines()) == 1 + len(trials)
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert "val_shards" not in best["data"] and best["model"]["layer"] == 0
    assert (study_dir / "trial_0000").is_dir(), "each trial has its own TensorBoard run"
    summary = images(study_dir / "summary")
    assert {"search/val_acc_vs_strength", "probes/auc_per_layer"} <= summary, summary
    assert "probes/auc_per_layer" not in images(study_dir / "trial_0000"), "once per study"

    again = search(tmp_path, config, "--n-trials", "2", "--sampler", "random")
    assert len(again.trials) == len(trials) + 2
    assert [t.params for t in again.trials[: len(trials)]] == [t.params for t in trials]


def images(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return set(acc.Tags()["images"])


def test_identical_configuration_is_not_generated_twice(llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"method": ["caa"], "layer": [0], "alpha": [0.0, 2.0]}
    config = write_search_config(tmp_path, llama, space)
    study = search(tmp_path, config, "--n-trials", "5", "--sampler", "random", "--pruner", "none")
    twins = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(twins) >= 3  # only two distinct configurations exist
    for t in twins:
        original = study.trials[t.user_attrs["duplicate_of"]]
        assert original.params == t.params and original.value == t.value
        assert "generated_tokens" not in t.user_attrs


def test_unsteered_generations_are_reused_across_trials(llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"method": ["none", "caa"], "layer": [0], "alpha": {"low": 0.0, "high": 0.0}}
    space["alpha"] = [0.0]
    space["positions"] = ["all", "generated"]
    config = write_search_config(tmp_path, llama, space)
    study = search(tmp_path, config, "--n-trials", "3", "--sampler", "random", "--pruner", "none")
    tokens = [t.user_attrs.get("generated_tokens") for t in study.trials if t.value is not None]
    tokens = [n for n in tokens if n is not None]
    assert tokens[0] > 0 and all(n == 0 for n in tokens[1:]), tokens


@pytest.mark.parametrize(
    "space, message",
    [
        ({"alpah": [1.0]}, "unknown search parameter 'alpah'"),
        ({"alpha": {"low": 2.0, "high": 1.0}}, "low .2.0. must be below high"),
        ({"alpha": {"low": 0.0}}, "a range needs `low` and `high`"),
        ({"layer": {"probe_top_k": 0}}, "probe_top_k must be a positive integer"),
        ({"method": ["caa"], "when": {"dac": {"alpha": [1.0]}}}, "when.dac names a method"),
    ],
)
def test_bad_search_space(tmp_path, llama, space, message):
    config = write_search_config(tmp_path, llama, space)
    with pytest.raises(SteerlightError, match=message):
        parse_argv(["--config", str(config)])


def test_search_then_test_ckpt_best_from_a_fresh_process(llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"layer": [0], "alpha": {"low": -2.0, "high": 2.0}}
    config = write_search_config(tmp_path, llama, space)
    search(tmp_path, config, "--n-trials", "3", "--pruner", "none")  # steered trials complete
    logs = tmp_path / "lightning_logs"
    env_cmd = [sys.executable, "-m", "steerlight", "test", "--logs_root", str(logs), "--ckpt"]

    def test(ckpt: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*env_cmd, ckpt],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    best = json.loads((logs / "study" / "best.json").read_text())
    ckpt, tested = "best", logs / "study"
    if not best["steers"]:  # the baseline won on val (a random model scores 0 throughout)
        refused = test("best")
        assert refused.returncode == 2 and "does not steer" in refused.stderr, refused.stderr
        steered = best_steered_checkpoint(logs / "study" / "best.ckpt")
        ckpt, tested = str(steered), steered.parent
    proc = test(ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study_dir = latest_verdict(tested)
    results = json.loads((study_dir / "final_results.json").read_text())
    bundle = json.loads((study_dir / "reproducibility.json").read_text())
    assert results["questions"] == 4 and results["steering"]["steers"] is True
    if ckpt == "best":
        assert bundle["study"]["study"] == "study" and "trial" in bundle["study"]
    assert bundle["base_model"]["weights_fingerprint"]
    assert bundle["environment"]["torch"]
    lines = (study_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "steered_completion" in json.loads(lines[0])


def test_print_config_shows_the_run_and_the_search(llama, tmp_path, capsys):
    from steerlight.search.command import main

    space = {"layer": [0], "alpha": {"low": -2.0, "high": 2.0}}
    config = write_search_config(tmp_path, llama, space)
    argv = ["--config", str(config), "--data.limit_val", "5", "--n-trials", "3", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["limit_val"] == 5 and printed["n_trials"] == 3
    assert printed["search"] == space and printed["model"]["model_name_or_path"] == str(llama)


@pytest.mark.parametrize("flag", ["--study-name", "--study_name"])
def test_both_spellings_of_a_flag(llama, tmp_path, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    config = write_search_config(tmp_path, llama, {"layer": [0], "alpha": [0.0]})
    study = search(tmp_path, config, flag, "spelled", "--n_trials", "1")
    assert study.study_name == "spelled" and len(study.trials) == 1


def test_pruner_startup_trials_parses_checks_and_builds_the_pruner(llama, tmp_path):
    from steerlight.search.study import make_study

    config = str(write_search_config(tmp_path, llama, {"layer": [0], "alpha": [0.0]}))
    options = parse_argv(["--config", config, "--pruner-startup-trials", "3"])[2]
    assert options.pruner_startup_trials == 3 and options.startup_trials == 5  # decoupled
    for value, message in [("-1", "--pruner-startup-trials -1 is invalid: use 0 or more"),
                           ("x", "pruner_startup_trials: got x; expected a int")]:  # fmt: skip
        with pytest.raises(SteerlightError, match=message) as err:
            parse_argv(["--config", config, "--pruner_startup_trials", value])
        assert "\n" not in str(err.value)
    with pytest.raises(SteerlightError, match="pruner: got mediann; choose one of 'median'"):
        parse_argv(["--config", config, "--pruner", "mediann"])

    pruner = make_study(options, "three", None).pruner
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_startup_trials == 3
    options = parse_argv(["--config", config, "--pruner", "none"])[2]
    assert isinstance(make_study(options, "none", None).pruner, optuna.pruners.NopPruner)
    # The default acts from the first completed trial (the baseline) on, after one round.
    study = make_study(parse_argv(["--config", config])[2], "default", None)
    baseline = study.ask()
    baseline.report(0.5, 0)
    study.tell(baseline, 0.5)
    worse = study.ask()
    worse.report(0.25, 0)
    assert worse.should_prune()

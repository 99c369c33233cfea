"""Several search workers on one study: a global trial budget, PostgreSQL, a killed worker.

The worker tests run `python -m steerlight.search` as real processes on a tiny random Llama.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import subprocess_env, write_search_config

from steerlight.checkpoint import check_checkpoint
from steerlight.cli import cli_main
from steerlight.errors import SteerlightError
from steerlight.layout import best_steered_checkpoint, latest_verdict
from steerlight.search.command import run
from steerlight.search.objective import _finished_twin

FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
# A continuous alpha: two workers never draw the same configuration by chance, so every
# repeated configuration in a study would be a bug (the baseline enqueued twice, a retry
# evaluated next to its original).
SPACE = {"layer": [0, 1], "alpha": {"low": -3.0, "high": 3.0}}


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> Path:
    return tiny_llama_dir


def worker_command(config: Path, root: Path, name: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "steerlight.search",
        "--config",
        str(config),
        "--root",
        str(root),
        "--study-name",
        name,
        "--rounds",
        "2",
        "--pruner",
        "none",
        "--sampler",
        "random",
        *flags,
    ]


def evaluated_configurations(trials: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    """The parameters of every trial that really ran (not answered by an identical one)."""
    return [tuple(sorted(t.params.items())) for t in trials if "duplicate_of" not in t.user_attrs]


# -- in one process ------------------------------------------------------------------------------


def test_a_trial_waits_for_an_identical_trial_another_worker_runs():
    study = optuna.create_study(direction="maximize")
    first = study.ask()
    first.suggest_categorical("layer", [0, 1])
    study.enqueue_trial(first.params)
    second = study.ask()  # same parameters, while `first` is still running elsewhere
    second.suggest_categorical("layer", [0, 1])
    assert _finished_twin(first, poll_s=0.01) is None, "never waits for a later trial"
    found = {}
    waiter = threading.Thread(target=lambda: found.update(twin=_finished_twin(second, 0.01)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive(), "waits while the identical trial runs"
    study.tell(first, 0.75)
    waiter.join(timeout=10)
    assert found["twin"].number == first.number and found["twin"].value == 0.75


def test_max_trials_is_a_budget_for_the_whole_study(llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_search_config(tmp_path, llama, SPACE)
    root = tmp_path / "lightning_logs"
    flags = ["--config", str(config), "--root", str(root), "--rounds", "2", "--pruner", "none"]
    flags += ["--sampler", "random"]
    assert len(run([*flags, "--max-trials", "3"]).trials) == 3
    assert len(run([*flags, "--max-trials", "3"]).trials) == 3, "a resumed study keeps its cap"
    study = run([*flags, "--max-trials", "4", "--n-trials", "5"])
    assert len(study.trials) == 4 and all(t.state in FINISHED for t in study.trials)
    workers = study.user_attrs["workers"]
    assert [w["seed"] for w in workers] == [0, 1, 2], "each run draws with its own seed"
    assert len(set(evaluated_configurations(study.trials))) == 4


# -- real worker processes -----------------------------------------------------------------------


def test_two_workers_share_one_postgres_study(postgres_url, llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_search_config(tmp_path, llama, SPACE)
    root = tmp_path / "lightning_logs"
    name = f"two_workers_{uuid.uuid4().hex[:8]}"
    command = worker_command(config, root, name, "--storage", postgres_url, "--max-trials", "6")
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), **PIPES) for _ in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=300) for w in workers]
        for worker, (out, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, out[-2000:] + err[-3000:]
        study = optuna.load_study(study_name=name, storage=postgres_url)
        trials = study.get_trials()
        assert len(trials) == 6 and all(t.state in FINISHED for t in trials), "exactly the cap"
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        registered = study.user_attrs["workers"]
        assert len(registered) == 2 and len({w["seed"] for w in registered}) == 2
        ran = {t.user_attrs["worker"] for t in trials}
        assert ran == {w["worker"] for w in registered}, "both workers ran trials"
        assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1, "one baseline"
        configurations = evaluated_configurations(trials)
        assert len(set(configurations)) == len(configurations), "nothing evaluated twice"

        # `test --ckpt best` from what the workers left: the study's folder (here, one shared
        # --root) and the database.
        best = json.loads((root / name / "best.json").read_text())
        assert best["trial"] == max(trials, key=lambda t: (t.value, -t.number)).number
        argv = ["test", "--study_name", name, "--logs_root", str(root), "--ckpt"]
        ckpt = root / name / "best.ckpt"
        if not best["steers"]:  # the baseline won on val: refused, the best steered trial instead
            with pytest.raises(SteerlightError, match="does not steer"):
                cli_main([*argv, "best"])
            ckpt = best_steered_checkpoint(ckpt)
        cli_main([*argv, "best" if best["steers"] else str(ckpt)])
        results = latest_verdict(ckpt.parent) / "final_results.json"
        assert json.loads(results.read_text())["questions"] == 4
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        optuna.delete_study(study_name=name, storage=postgres_url)


def test_a_killed_worker_loses_nothing_and_its_trial_is_retried(llama, tmp_path):
    config = write_search_config(tmp_path, llama, SPACE)
    root = tmp_path / "lightning_logs"
    # Heartbeats every second: a trial silent for 2 s belongs to a dead worker.
    command = worker_command(
        config, root, "crash", "--max-trials", "5", "--heartbeat-interval", "1"
    )
    storage = f"sqlite:///{root / 'crash' / 'study.db'}"
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(
            command, cwd=tmp_path, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        killed = wait_for_a_running_trial_after_a_complete_one(
            root / "crash" / "study.db", log, first
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    before = optuna.load_study(study_name="crash", storage=storage).get_trials()
    done = {t.number: t for t in before if t.state in FINISHED}
    time.sleep(2.5)  # the grace period passes (the restart's imports take about as long)

    again = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), timeout=300, **PIPES)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="crash", storage=storage).get_trials()
    for number, old in done.items():
        now = trials[number]
        assert (now.state, now.value, now.params) == (old.state, old.value, old.params)
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, "retried once"
    retry = retries[0]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert f"trial {retry.number} (retry of trial {killed.number}" in again.stdout
    assert all(t.state in FINISHED for t in trials), "nothing left RUNNING or WAITING"
    assert len(trials) == 5 + 1, "the budget of 5, plus the killed trial its retry replaced"
    for ckpt in root.rglob("*.ckpt"):
        check_checkpoint(ckpt)  # the kill left no half-written checkpoint under a real name


def wait_for_a_running_trial_after_a_complete_one(database: Path, log: Path, worker):
    """Poll the study until a trial is mid-run (parameters drawn) after one completed."""
    storage = f"sqlite:///{database}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed mid-trial"
        time.sleep(0.2)
        if "] worker " not in log.read_text():  # its storage is not set up yet: opening it
            continue  # here too would race the worker to create Optuna's tables
        trials = optuna.load_study(study_name="crash", storage=storage).get_trials()
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params]
        if running and any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
            return running[0]
    raise AssertionError("no trial was running after a completed one within 240 s")

"""Hostile and careless input, round 2, through the real command lines.

Same contract as test_bad_input.py (one error line naming the problem and what is valid, exit 2,
nothing that existed changed), plus the file system (nothing written outside `--root`) and the
study's trial states after an interrupt and a resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import subprocess_env
from test_bad_input import SPACE, assert_refused, fit, run_cli, snapshot, workspace  # noqa: F401

# -- security: a study never leaves --root --------------------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "team/run1", "/tmp/abs", "..", ".hidden", ""])
def test_a_study_name_is_one_folder_under_root(workspace, tmp_path, monkeypatch, capsys, name):  # noqa: F811
    root = workspace.root / "contained"
    root.mkdir(exist_ok=True)
    config = workspace.config("contained.yaml", search=SPACE)
    outside = {p.name for p in workspace.root.parent.iterdir()}
    argv = ["--config", str(config), "--root", str(root), "--study-name", name, "--n-trials", "1"]
    assert_refused(
        workspace, "search", argv, ["study name", "one folder name"], monkeypatch, capsys
    )
    assert not any(root.iterdir()), "nothing written under --root either"
    assert {p.name for p in workspace.root.parent.iterdir()} == outside


def test_ckpt_best_refuses_a_study_name_that_is_a_path(workspace, monkeypatch, capsys):  # noqa: F811
    argv = ["test", "--ckpt", "best", "--root", str(workspace.root), "--study-name", "../studies"]
    assert_refused(
        workspace, "steerlight", argv, ["'../studies'", "one folder"], monkeypatch, capsys
    )


# -- one line, not a traceback --------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expect",
    [
        (["--model.generation.max_new_tokens", "0"],
         ["model.generation", "max_new_tokens", ">= 1"]),
        (["--model.generation.do_sample", "true", "--model.generation.temperature", "0"],
         ["model.generation", "temperature", "> 0"]),
        (["--model.generation.top_p", "0"], ["model.generation", "top_p", "(0, 1]"]),
        (["--model.dac.top_p", "1.5"], ["model.dac", "top_p", "(0, 1]"]),
        (["--model.generation.max_new_tokens", "10000000000"], ["max_new_tokens", "context"]),
        (["--trainer.accelerator", "gpu"], ["trainer", "gpu"]),
        (["--data.limit_val", "0"], ["data.limit_val=0", "1 or more"]),
        (["--data.limit_val", "-5"], ["data.limit_val=-5", "1 or more"]),
        (["--data.limit_train", "-1"], ["data.limit_train=-1", "1 or more"]),
        (["--data.source", ""], ["data.source is empty", "synthetic"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None,
)  # fmt: skip
def test_bad_values_are_one_line(workspace, monkeypatch, capsys, flags, expect):  # noqa: F811
    assert_refused(workspace, "steerlight", fit(workspace, *flags), expect, monkeypatch, capsys)


def test_timeout_must_be_positive(workspace, monkeypatch, capsys):  # noqa: F811
    config = workspace.config("timeout.yaml", search=SPACE)
    argv = ["--config", str(config), "--root", str(workspace.root / "t"), "--timeout", "-1"]
    assert_refused(workspace, "search", argv, ["--timeout -1", "positive"], monkeypatch, capsys)


@pytest.mark.parametrize("content, expect", [("- a\n- b\n", "a YAML list"), ("", "empty")])
def test_a_config_that_is_not_a_mapping(workspace, monkeypatch, capsys, content, expect):  # noqa: F811
    path = workspace.root / f"not_a_mapping_{len(content)}.yaml"
    path.write_text(content)
    argv = ["fit", "--config", str(path)]
    assert_refused(
        workspace, "steerlight", argv, [str(path), expect, "mapping"], monkeypatch, capsys
    )


def test_a_config_that_is_a_folder(workspace, monkeypatch, capsys):  # noqa: F811
    folder = workspace.root / "a_folder.yaml"
    folder.mkdir(exist_ok=True)
    for entry in ("steerlight", "search"):
        argv = ["fit", "--config", str(folder)] if entry == "steerlight" else ["-c", str(folder)]
        assert_refused(workspace, entry, argv, [str(folder), "is a folder"], monkeypatch, capsys)


def test_a_file_where_the_logger_folder_belongs(workspace, monkeypatch, capsys):  # noqa: F811
    blocker = workspace.root / "blocker"
    blocker.write_text("a file, not a folder")
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": str(blocker / "logs")}}  # fmt: skip
    config = workspace.config("blocked.yaml", trainer={"logger": logger})
    expect = [str(blocker), "Not a directory"]
    assert_refused(
        workspace, "steerlight", ["fit", "--config", str(config)], expect, monkeypatch, capsys
    )


def test_steerlight_home_that_is_a_file(workspace, monkeypatch, capsys):  # noqa: F811
    home = workspace.root / "home_file"
    home.write_text("not a folder")
    monkeypatch.setenv("STEERLIGHT_HOME", str(home))
    config = workspace.config("home.yaml")
    settings = yaml.safe_load(config.read_text())
    settings["model"]["cache_dir"] = None  # the activation cache lives in STEERLIGHT_HOME
    config.write_text(yaml.safe_dump(settings))
    argv = ["fit", "--config", str(config)]
    assert_refused(
        workspace, "steerlight", argv, ["STEERLIGHT_HOME", "is a file"], monkeypatch, capsys
    )


def test_a_search_space_value_the_model_does_not_take(workspace, monkeypatch, capsys):  # noqa: F811
    config = workspace.config("middle.yaml", search={"positions": "middle", "layer": [0]})
    root = workspace.root / "middle_root"
    argv = ["--config", str(config), "--root", str(root), "--n-trials", "2"]
    expect = ["positions='middle'", "'prompt_end+generated'", "'all'"]
    assert_refused(workspace, "search", argv, expect, monkeypatch, capsys)
    assert not (root / "middle" / "study.db").exists(), "refused before any trial"


def test_a_corrupt_best_yaml_is_named(workspace, monkeypatch, capsys):  # noqa: F811
    studies = workspace.root / "studies_corrupt"
    if not studies.exists():
        import shutil

        shutil.copytree(workspace.root / "studies", studies)
    best = studies / "study" / "best.yaml"
    best.write_text("model: [unclosed\n")
    argv = ["test", "--ckpt", "best", "--root", str(studies)]
    assert_refused(
        workspace, "steerlight", argv, [str(best), "not valid YAML"], monkeypatch, capsys
    )


def test_a_read_only_study_database(workspace, monkeypatch, capsys):  # noqa: F811
    studies = workspace.root / "studies"
    database = studies / "study" / "study.db"
    config = workspace.config("study.yaml", search=SPACE)
    if subprocess.run(["chattr", "+i", str(database)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable file) is not available to make the file read-only")
    try:
        argv = ["--config", str(config), "--root", str(studies), "--n-trials", "1"]
        assert_refused(workspace, "search", argv, ["read-only", "study"], monkeypatch, capsys)
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=True)


def test_flags_beat_a_checkpoints_saved_logger(workspace, tmp_path, monkeypatch, capsys):  # noqa: F811
    logs = tmp_path / "elsewhere"
    argv = ["test", "--ckpt", str(workspace.checkpoint),
            "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
            "--trainer.logger.init_args.save_dir", str(logs)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["steerlight", *argv])
    import steerlight.__main__

    steerlight.__main__.main()
    assert "results:" in capsys.readouterr().out
    assert any(logs.rglob("events.out.tfevents.*")), "the flag's logger folder was used"


# -- interrupt and resume --------------------------------------------------------------------


def test_ctrl_c_fails_the_running_trial_and_a_resume_goes_on(workspace, tmp_path):  # noqa: F811
    config = workspace.config(
        "interrupt.yaml",
        search={"layer": [0, 1], "alpha": {"low": -2.0, "high": 2.0}},
        data={"val_size": 8, "batch_size": 4},
    )
    settings = yaml.safe_load(config.read_text())
    settings["model"]["generation"] = {"max_new_tokens": 16}  # trials long enough to interrupt
    config.write_text(yaml.safe_dump(settings))
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "steerlight.search", "--config", str(config), "--root",
               str(root), "--study-name", "ctrl_c", "--n-trials", "4", "--rounds", "2",
               "--pruner", "none"]  # fmt: skip
    storage = f"sqlite:///{root / 'ctrl_c' / 'study.db'}"
    worker = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not (root / "ctrl_c" / "trials.csv").exists():
                continue  # its storage is set up and a trial has finished
            trials = optuna.load_study(study_name="ctrl_c", storage=storage).get_trials()
            if any(t.state == optuna.trial.TrialState.RUNNING and t.params for t in trials):
                break
        worker.send_signal(signal.SIGINT)
        _, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "steerlight.search: interrupted" in err
    trials = optuna.load_study(study_name="ctrl_c", storage=storage).get_trials()
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.user_attrs.get("error") == "interrupted" for t in failed)

    resume = [*command[:-6], "--n-trials", "1", *command[-4:]]  # the same study, one more trial
    again = subprocess.run(
        resume, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    after = optuna.load_study(study_name="ctrl_c", storage=storage).get_trials()
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in after]
    assert len(after) == len(trials) + 1 and after[-1].state == optuna.trial.TrialState.COMPLETE


def test_a_resume_with_other_data_settings_is_refused(workspace, monkeypatch, capsys):  # noqa: F811
    studies = workspace.root / "studies"
    config = workspace.config("study.yaml", search=SPACE)
    before = optuna.load_study(study_name="study", storage=f"sqlite:///{studies}/study/study.db")
    n = len(before.trials)
    base = ["--config", str(config), "--root", str(studies), "--n-trials", "1"]
    for flags, key in [
        (["--data.split_seed", "7"], "data.split_seed"),
        (["--data.limit_val", "2"], "data.limit_val"),
        (["--rounds", "1"], "rounds"),  # 3 would be lowered to the stored 2
        (["--model.generation.max_new_tokens", "5"], "model.generation"),
    ]:
        expect = [key, "would not compare", "--study_name"]
        assert_refused(workspace, "search", [*base, *flags], expect, monkeypatch, capsys)
    after = optuna.load_study(study_name="study", storage=f"sqlite:///{studies}/study/study.db")
    assert len(after.trials) == n, "no trial added to the study"


def test_a_killed_workers_trial_fails_at_once_on_resume(workspace, tmp_path):  # noqa: F811
    """A trial whose worker process is gone is not left RUNNING until its heartbeat is stale."""
    from steerlight.search.workers import fail_orphaned_trials, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'orphan.db'}", heartbeat_interval=600)
    study = optuna.create_study(study_name="orphan", storage=storage)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    trial = study.ask({"alpha": optuna.distributions.FloatDistribution(-1, 1)})
    import socket

    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead}")
    alive = study.ask()
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    assert fail_orphaned_trials(study) == [trial.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == optuna.trial.TrialState.RUNNING, "a live worker is left alone"
    retry = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retry) == 1 and retry[0].params == trial.params


def test_files_get_the_umasks_mode(tmp_path):
    from steerlight.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
    assert yaml.safe_load((tmp_path / "shared.json").read_text()) == {"a": 1}


def test_a_study_name_path_is_refused_by_the_api(tmp_path):
    from steerlight.errors import SteerlightError
    from steerlight.layout import StudyFolder

    with pytest.raises(SteerlightError, match="one folder name"):
        StudyFolder(Path(tmp_path), "../x")

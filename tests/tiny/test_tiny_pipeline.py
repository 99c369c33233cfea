"""The embedded tiny model end to end: its quality bar, steering that moves it, a pruned search,
and the README's fit -> search -> test flow. The model is built once per $STEERLIGHT_HOME."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import optuna
import yaml
from conftest import ROOT, subprocess_env

from steerlight.data.datamodule import GSM8KDataModule
from steerlight.layout import find_last, latest_verdict
from steerlight.module import SteeredLM
from steerlight.search.command import run
from steerlight.tiny import default_test_rows, evaluate


def test_the_tiny_model_meets_its_quality_bar(tiny_model):
    rows = default_test_rows()
    records = evaluate(tiny_model, rows)
    steps = [row["answer"].count("<<") for row in rows]
    assert sum(n >= 2 for n in steps) >= len(rows) / 2, "most problems must take 2-3 steps"
    accuracy = sum(r["correct"] for r in records) / len(records)
    assert accuracy >= 0.40, f"greedy exact match {accuracy:.3f} on {len(rows)} test questions"


def test_alpha_zero_is_the_baseline_and_a_large_alpha_lowers_accuracy(
    tiny_model, tmp_path, monkeypatch
):
    data = GSM8KDataModule(
        source="synthetic",
        tokenizer=str(tiny_model),
        n_shots=0,
        limit_train=128,
        limit_val=10,
        limit_test=150,
        batch_size=50,
    )
    module = SteeredLM(
        model_name_or_path=str(tiny_model),
        layer="auto",  # the layer whose probe separates good from bad solutions best
        alpha=0.0,
        generation={"max_new_tokens": 96},
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, data)

    # alpha = 0 needs no hooks at all; force the hooked path to show it changes no token.
    with monkeypatch.context() as patch:
        patch.setattr(SteeredLM, "steers", property(lambda self: True))
        zero = trainer.test(module, data, verbose=False)[0]
    assert len(module.records) == 150
    assert all(r["steered_completion"] == r["baseline_completion"] for r in module.records)
    baseline = zero["test/baseline_acc_strict"]
    assert zero["test/acc"] == baseline and baseline >= 0.25

    for alpha in (-4.0, 4.0):  # four times the layer's mean activation norm
        module.hparams.alpha = alpha
        steered = trainer.test(module, data, verbose=False)[0]
        assert steered["test/baseline_acc_strict"] == baseline
        assert steered["test/acc"] <= baseline - 0.15, (alpha, steered["test/acc"], baseline)


def test_search_prunes_a_terrible_region_and_fails_a_bad_trial(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
        "model": {
            "model_name_or_path": str(tiny_model),
            "generation": {"max_new_tokens": 96},
            "cache_dir": str(tmp_path / "cache"),
        },
        "data": {"source": "synthetic", "n_shots": 0, "limit_train": 64, "limit_val": 60},
        # |alpha| well above 1 wrecks the model: most of this space is a terrible region.
        "search": {"layer": [2, 99], "alpha": {"low": -12.0, "high": 12.0}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    flags = [
        "--n-trials",
        "8",
        "--rounds",
        "3",
        "--startup-trials",
        "1",
        "--sampler",
        "random",
        "--seed",
        "1",
    ]
    study = run(["--config", str(path), "--root", str(tmp_path / "logs"), *flags])

    states = [t.state for t in study.trials]
    assert len(states) == 8
    first = study.trials[0]
    assert first.params["alpha"] == 0.0 and first.state == optuna.trial.TrialState.COMPLETE
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.state, t.intermediate_values) for t in study.trials]
    for t in pruned:
        assert max(t.intermediate_values) < 2, "pruned before its last round"
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["layer"] == 99 for t in failed)
    assert all("layer 99 is out of range" in t.user_attrs["error"] for t in failed)


def steerlight(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_readme_flow_fit_search_test(tiny_model, tmp_path):
    """The README's commands, on configs/debug.yaml with smaller sizes."""
    config = yaml.safe_load((ROOT / "configs" / "debug.yaml").read_text())
    assert config["model"]["model_name_or_path"] == "tiny"  # resolved to the cached build
    config["data"].update(limit_train=64, limit_val=40, limit_test=40)
    config["model"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "debug.yaml"
    path.write_text(yaml.safe_dump(config))

    steerlight("steerlight", "fit", "--config", str(path), cwd=tmp_path)
    assert list((tmp_path / "lightning_logs" / "debug").glob("version_0/checkpoints/*.ckpt"))
    search = steerlight("steerlight.search", "--config", str(path), "--n-trials", "4", cwd=tmp_path)
    lines = search.stdout.strip().splitlines()
    assert "(unsteered baseline, trial 0:" in next(x for x in lines if "] best: trial " in x)
    study_dir = tmp_path / "lightning_logs" / "debug"
    best = json.loads((study_dir / "best.json").read_text())
    ckpt = "best"
    if not best["steers"]:  # the flow the README shows when nothing beat the baseline on val
        ckpt = unsteered_best_flow(lines, tmp_path)
    test = steerlight("steerlight", "test", "--ckpt", ckpt, cwd=tmp_path)
    out = test.stdout
    assert "| match    | baseline | steered | difference [95% CI]" in out and "McNemar p" in out
    for mode in ("strict", "flexible"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {mode} "))
        assert "| 40 |" in row and "[" in row, row  # n, and the CI
    last = find_last(tmp_path / "lightning_logs")  # what `--ckpt last` names
    tested = study_dir if ckpt == "best" else (last if ckpt == "last" else Path(ckpt)).parent
    verdict = latest_verdict(tested)
    results_line = next(x for x in out.splitlines() if x.startswith("results: "))
    assert (tmp_path / results_line[len("results: ") :]) == verdict / "final_results.json"
    assert "steering: method=" in out
    assert "Test metric" not in out, "the verdict replaces Lightning's metrics table"

    results = json.loads((verdict / "final_results.json").read_text())
    assert results["questions"] == 40
    if ckpt == "best":
        bundle = json.loads((verdict / "reproducibility.json").read_text())
        assert bundle["study"]["trial"] == best["trial"]
    assert len((verdict / "predictions.jsonl").read_text().splitlines()) == 40

    # The flow ends on a steering every export target takes: gguf too (layer >= 1).
    export = steerlight(
        "steerlight", "export", "--ckpt", ckpt, "--format", "gguf", "--out", "cv.gguf", cwd=tmp_path
    )
    layer = int(export.stdout.split("decoder layer ")[1].split()[0])
    assert layer >= 1 and (tmp_path / "cv.gguf").is_file(), export.stdout


def unsteered_best_flow(lines: list[str], cwd: Path) -> str:
    """The search said its best does not steer: `test --ckpt best` refuses in one line, and the
    summary's next command gives a steered checkpoint; returns it for `test --ckpt`."""
    assert "does not steer: no steered trial beat the unsteered baseline on val" in lines[-2]
    refused = subprocess.run(
        [sys.executable, "-m", "steerlight", "test", "--ckpt", "best"],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout[-2000:]
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("steerlight") and "--ckpt best: study 'debug''s best trial" in line
    assert not (cwd / "lightning_logs" / "debug" / "verdicts").exists()  # nothing was tested
    if " tests it anyway " in lines[-1]:  # the best steered trial, named with its checkpoint
        return lines[-1].split("python -m steerlight test --ckpt ")[1].split()[0]
    fit = lines[-1].split("python -m steerlight fit ")[1].split(", then --ckpt last")[0]
    steerlight("steerlight", "fit", *fit.split(), cwd=cwd)  # one steering, scored on val
    return "last"

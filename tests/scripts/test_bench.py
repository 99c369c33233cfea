"""`scripts/bench` keeps working: the quick run's report shape (never its times), and the
helpers its baselines rely on."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, subprocess_env

BENCH = ROOT / "scripts" / "bench"
BENCHMARKS = {
    "hook_overhead",
    "trial_cost",
    "activation_extraction",
    "dac_vs_caa",
    "pruning",
    "cache",
    "refill",
    "growth",
    "real",
    "curves",
}


def test_quick_benchmark_writes_every_ratio(tmp_path: Path, gsm8k_dir: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--quick", "--out", str(out)]
    cmd += ["--source", "gsm8k", "--gsm8k-dir", str(gsm8k_dir)]
    cmd += ["--real-model", "tiny"]  # (the part's code; SmolLM2's numbers are a full run's)
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=subprocess_env(STEERLIGHT_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {"command", "machine", "torch", "threads", "device", "quick"} <= set(report["meta"])
    assert report["meta"]["quick"] is True
    assert set(report["benchmarks"]) == BENCHMARKS
    for name, bench in report["benchmarks"].items():
        assert math.isfinite(bench["ratio"]) and bench["ratio"] > 0, name
        assert isinstance(bench["target_met"], bool), name
        assert bench["target"] and bench["ratio_of"] and bench["measured"], name
        assert bench["median_s"], name
        for label, seconds in bench["median_s"].items():
            assert math.isfinite(seconds) and seconds > 0, (name, label)
    assert report["benchmarks"]["activation_extraction"]["details"]["forward_ratio"] == 2
    pruning = report["benchmarks"]["pruning"]["details"]
    assert pruning["median_pruner"]["generated_tokens"] > 0
    assert pruning["no_pruner"]["generated_tokens"] > 0
    # what the unmet targets are measured against: counts and floors, not times
    trial = report["benchmarks"]["trial_cost"]["details"]
    assert 0 < trial["steerlight_forwards"] < trial["naive_generate_forwards"]
    assert report["benchmarks"]["dac_vs_caa"]["details"]["forward_floor"] > 1
    real = report["benchmarks"]["real"]["details"]
    assert set(real["forms"]) == {"gsm8k"}, "tiny has no chat template: 5-shot only"
    assert real["forms"]["gsm8k"]["tokens_identical"] is True
    assert real["forms"]["gsm8k"]["rows_differing"] == 0 and real["matmul_gflops"] > 0
    ceilings = report["benchmarks"]["refill"]["details"]["padded_over_unfinished_row_steps"]
    assert set(ceilings) == {"tiny", "random"} and all(c >= 1 for c in ceilings.values())

    growth = report["benchmarks"]["growth"]["details"]
    figure = Path(growth["figure"])
    assert figure == tmp_path / "bench.growth.png", "the figure lies beside the JSON"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    methods = {"plain", "CAA", "DAC"}
    assert set(growth["sweeps"]) == {"questions", "hidden", "tokens"}
    for name, sweep in growth["sweeps"].items():
        assert len(sweep["values"]) >= 2 and sweep["values"] == sorted(sweep["values"]), name
        assert set(sweep["median_s"]) == methods, name
        for method, medians in sweep["median_s"].items():
            assert len(medians) == len(sweep["values"]), (name, method)
        assert set(growth["fits"][name]) == methods, name
    for name in ("questions", "tokens"):
        for method, fit in growth["fits"][name].items():
            assert {"slope_s", "intercept_s", "r2", "bend"} <= set(fit), (name, method)
    for fit in growth["fits"]["hidden"].values():
        assert math.isfinite(fit["exponent"])
    curves = report["benchmarks"]["curves"]["details"]
    assert curves["tokens_identical"] is True, "every decoding path gives the plain path's tokens"
    assert Path(curves["figure"]) == tmp_path / "bench.curves.png"
    for name, sweep in curves["sweeps"].items():
        assert len(sweep) >= 2 and all(set(pt["seconds"]) == set(curves["fits"][name])
                                       for pt in sweep.values()), name  # fmt: skip
    memory = growth["memory"]
    assert set(memory["extra_peak_mib"]) == methods
    kv = memory["kv_cache_mib_analytic"]
    assert kv["DAC"] == pytest.approx(3 * kv["CAA"]) and kv["CAA"] > 0  # three caches vs one
    assert growth["not_linear"], "the width sweep is always explained"

    table = out.with_suffix(".md").read_text()
    assert "| benchmark | ratio | target | met | measured |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 2 + len(
        BENCHMARKS
    )
    written = {p.name for p in tmp_path.iterdir()} - {"home"}  # (the run's $STEERLIGHT_HOME)
    assert written == {"bench.json", "bench.md", "bench.growth.png", "bench.curves.png"}, (
        "nothing else lands in the caller's folder"
    )


def test_bench_dac_wrapper_runs_the_bench(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_dac.py"), "--help"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--naive-dac-repeats" in proc.stdout


# ---- the baselines' helpers, imported as `python scripts/bench` imports them -------------------


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """A namespace of the bench's modules; they leave sys.modules afterwards (bare names)."""
    monkeypatch.syspath_prepend(str(BENCH))
    names = ("common", "bench_models", "extraction", "growth")
    modules = argparse.Namespace(**{n: importlib.import_module(n) for n in names})
    yield modules
    for path in BENCH.glob("*.py"):
        if path.stem != "__main__":  # never this process's own __main__
            sys.modules.pop(path.stem, None)


@pytest.fixture
def random_model(bench):
    args = argparse.Namespace(
        vocab=97, hidden=32, layers=3, heads=4, seed=0, lm_head_scale=1.0, dtype="float32"
    )
    return bench.bench_models.random_llama(args, torch.device("cpu"))


def test_per_layer_extraction_matches_one_pass(bench, random_model) -> None:
    from steerlight.steering.activations import read_activations

    ids = torch.randint(3, 97, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    counter = bench.common.ForwardCounter(random_model)
    with counter:
        per_layer = bench.extraction.activations_per_layer(random_model, ids, mask, mask.bool())
    assert counter.count == 3  # one forward per layer
    one_pass = read_activations(random_model, ids, mask, mask.bool())
    assert per_layer.shape == (2, 3, 32)
    torch.testing.assert_close(per_layer, one_pass)


@torch.no_grad()
def test_add_after_layer_steers_like_steer_then_restores(bench, random_model) -> None:
    from steerlight.model.layers import decoder_layers
    from steerlight.steering.hooks import steer

    ids = torch.randint(3, 97, (2, 5))
    vector = torch.randn(32)
    block = decoder_layers(random_model)[1]
    before = random_model(input_ids=ids).logits
    with bench.common.add_after_layer(block, lambda h: 0.5 * vector.to(h)):
        naive = random_model(input_ids=ids).logits
    with steer(random_model, 1, vector, 0.5, positions="all"):
        steered = random_model(input_ids=ids).logits
    assert not torch.allclose(naive, before)
    torch.testing.assert_close(naive, steered)
    assert "forward" not in vars(block)  # the class's forward again
    torch.testing.assert_close(random_model(input_ids=ids).logits, before)


def test_growth_fits_tell_a_line_from_a_curve(bench) -> None:
    x = [16, 32, 64, 128]
    line = bench.growth.line_fit(x, [0.5 + 0.01 * v for v in x])
    assert line["slope_s"] == pytest.approx(0.01) and line["intercept_s"] == pytest.approx(0.5)
    assert line["r2"] == pytest.approx(1.0) and line["bend"] == pytest.approx(1.0)
    assert bench.growth.straight(line)
    curve = bench.growth.line_fit(x, [1e-4 * v * v for v in x])
    assert curve["bend"] > bench.growth.BEND and not bench.growth.straight(curve)
    square = bench.growth.exponent_fit(x, [3.0 * v * v for v in x])
    assert square["exponent"] == pytest.approx(2.0)
    assert square["segment_exponents"] == pytest.approx([2.0, 2.0, 2.0])

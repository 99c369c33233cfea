"""`scripts/bench.py --quick` keeps working: the JSON report's shape, never its times."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, subprocess_env

BENCHMARKS = {"hook_overhead", "trial_cost", "activation_extraction", "dac_vs_caa", "pruning"}


def test_quick_benchmark_writes_every_ratio(tmp_path: Path, gsm8k_dir: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out)]
    cmd += ["--source", "gsm8k", "--gsm8k-dir", str(gsm8k_dir)]
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

    table = out.with_suffix(".md").read_text()
    assert "| benchmark | ratio | target | met | measured |" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 2 + 5
    written = {p.name for p in tmp_path.iterdir()}
    assert written == {"bench.json", "bench.md"}, "nothing else lands in the caller's folder"

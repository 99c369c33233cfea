"""scripts/real_baselines.py reports steerlight's own numbers: what `validate` with method
`none` logs, per preset, with tokens per answer and the token-cap fraction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def load_script():
    spec = importlib.util.spec_from_file_location(
        "real_baselines", ROOT / "scripts" / "real_baselines.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_what_validate_logs(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    from steerlight.cli import cli_main

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path / "home"))
    model = str(tiny_llama_dir)
    argv = ["--model", model, "--data", "synthetic", "--presets", "gsm8k", "gsm8k_cot_zeroshot"]
    argv += ["--n", "4", "--max-new-tokens", "5", "--batch-size", "2", "--out", str(tmp_path / "o")]
    result = load_script().main(argv)
    saved = json.loads((tmp_path / "o" / "baselines.json").read_text())
    assert saved["presets"] == result["presets"] and saved["command"].endswith(
        "--out " + str(tmp_path / "o")
    )
    table = (tmp_path / "o" / "baselines.md").read_text()
    assert table.count("\n| gsm8k") == 2 and "tokens/answer" in table
    for row in result["presets"]:
        validate = cli_main(
            ["validate", "--model.model_name_or_path", model, "--model.method", "none",
             "--data.source", "synthetic", "--data.preset", row["preset"], "--data.limit_val", "4",
             "--data.batch_size", "2", "--model.generation.max_new_tokens", "5",
             "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
        )  # fmt: skip
        metrics = validate.trainer.callback_metrics
        assert row["questions"] == 4 and row["shots"] == (5 if row["preset"] == "gsm8k" else 0)
        assert row["strict"] == float(metrics["val/acc_strict"])
        assert row["flexible"] == float(metrics["val/acc_flexible"])
        assert row["tokens_per_answer"] == float(metrics["val/tokens_per_answer"])
        assert 0 < row["tokens_per_answer"] <= 5 and 0 <= row["at_token_cap"] <= 1
        assert row["seconds_per_question"] > 0

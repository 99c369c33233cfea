"""No pickle anywhere in the package: safetensors, or torch.load with weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "steerlight"


def sources() -> list[tuple[Path, str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    return [(f, f.read_text()) for f in files]


def test_no_pickle_imports():
    for path, text in sources():
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), path


def test_every_torch_load_is_weights_only():
    for path, text in sources():
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"


def test_remote_code_is_off_by_default():
    import inspect

    from steerlight.model.loading import load_model, load_tokenizer
    from steerlight.module import SteeredLM

    for fn in (load_model, load_tokenizer, SteeredLM.__init__):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False

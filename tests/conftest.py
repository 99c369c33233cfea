"""Shared fixtures. Real GSM8K rows come from ../shared/data/gsm8k (never from the project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The shared GSM8K copy; a missing copy fails the test loudly (never skips)."""
    path = Path(os.environ.get("STEERLIGHT_GSM8K_DIR", ROOT.parent / "shared" / "data" / "gsm8k"))
    if not (path / "train.jsonl").is_file() or not (path / "test.jsonl").is_file():
        pytest.fail(
            f"GSM8K copy not found at {path} (need train.jsonl and test.jsonl); "
            "set STEERLIGHT_GSM8K_DIR to the folder holding them"
        )
    return path

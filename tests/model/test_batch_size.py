"""`data.batch_size: auto` (`steerlight.model.batch_size`): measured, chosen by rule, kept."""

from __future__ import annotations

import json

import pytest

from steerlight.model import batch_size
from steerlight.model.batch_size import find_batch_size

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    return tmp_path


def _rates(monkeypatch, rates: dict[int, float | None]) -> list[int]:
    """Make the measurement return `rates` (None: out of memory); returns the sizes tried."""
    tried: list[int] = []

    def fake(model, rows, length, timer):
        tried.append(rows)
        return rates[rows]

    monkeypatch.setattr(batch_size, "_decode_rate", fake)
    return tried


@pytest.mark.parametrize(
    ("rates", "limit", "want", "tried"),
    [
        # a CPU: the rate flattens; the smallest size within 10% of the best is kept
        ({8: 50.0, 16: 70.0, 32: 76.0, 64: 79.0}, 1024, 16, [8, 16, 32]),
        # a GPU: the rate keeps growing until memory runs out
        ({8: 100.0, 16: 200.0, 32: 390.0, 64: 700.0, 128: None}, 1024, 64, [8, 16, 32, 64, 128]),
        # no more than the limit (a pass's questions)
        ({8: 100.0, 16: 200.0, 24: 300.0}, 24, 24, [8, 16, 24]),
    ],
)
def test_the_rule(rates, limit, want, tried, tiny_random_model, home, monkeypatch):
    sizes = _rates(monkeypatch, rates)
    assert find_batch_size(tiny_random_model("llama"), 100, "fp", limit=limit) == want
    assert sizes == tried


def test_measured_once_then_kept_per_model_and_length(tiny_random_model, home, monkeypatch):
    model = tiny_random_model("llama")
    sizes = _rates(monkeypatch, {8: 10.0, 16: 30.0, 32: 31.0})
    assert find_batch_size(model, 100, "fp") == 16
    assert find_batch_size(model, 120, "fp") == 16  # the same length bucket (128): kept
    assert sizes == [8, 16, 32]
    assert list(json.loads((home / "batch_sizes.json").read_text()).values()) == [16]
    assert find_batch_size(model, 300, "fp") == 16 and len(sizes) == 6  # a new bucket: measured
    assert find_batch_size(model, 100, "other weights") == 16 and len(sizes) == 9


def test_an_answer_capped_by_the_limit_is_not_kept(tiny_random_model, home, monkeypatch):
    model = tiny_random_model("llama")
    sizes = _rates(monkeypatch, {8: 10.0, 16: 20.0, 32: 40.0, 64: 41.0})
    assert find_batch_size(model, 100, "fp", limit=16) == 16
    assert find_batch_size(model, 100, "fp") == 32 and sizes == [8, 16, 8, 16, 32, 64]
    assert find_batch_size(model, 100, "fp", limit=16) == 16 and len(sizes) == 6  # kept: 32


def test_nothing_fits(tiny_random_model, home, monkeypatch):
    _rates(monkeypatch, {8: None})
    with pytest.raises(MemoryError, match="not even 8 rows"):
        find_batch_size(tiny_random_model("llama"), 100, "fp")


def test_a_real_measurement_on_a_tiny_model(tiny_random_model, home):
    """The decode steps run on the model (a rate > 0 per size) and the answer is a size tried."""
    rate = batch_size._decode_rate(tiny_random_model("llama"), 8, 40, batch_size.time.perf_counter)
    assert rate is not None and rate > 0
    assert find_batch_size(tiny_random_model("llama"), 40, "fp", limit=32) in (8, 16, 32)

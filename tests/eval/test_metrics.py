"""The ExactMatch torchmetrics accuracy."""

from __future__ import annotations

import pytest
import torch

from steerlight.answers import INVALID
from steerlight.eval.metrics import ExactMatch

PREDS = ["18", INVALID, "5.0", "1,234", "7"]
GOLDS = ["18", "3", "5", "1234", "8"]  # 3 of 5 correct


def test_update_and_compute() -> None:
    metric = ExactMatch()
    metric.update(PREDS, GOLDS)
    assert metric.correct.dtype == torch.long and metric.total.dtype == torch.long
    assert int(metric.correct) == 3 and int(metric.total) == 5
    acc = metric.compute()
    assert acc.is_floating_point()
    assert acc.item() == pytest.approx(0.6)

    metric.update(["1"], ["1"])
    assert int(metric.correct) == 4 and int(metric.total) == 6
    assert metric.compute().item() == pytest.approx(4 / 6)


def test_compute_without_updates_is_zero() -> None:
    metric = ExactMatch()
    with pytest.warns(UserWarning):  # torchmetrics warns about compute before update
        acc = metric.compute()
    assert acc.is_floating_point() and acc.item() == 0.0


def test_forward_returns_batch_accuracy_and_accumulates() -> None:
    metric = ExactMatch()
    assert metric(["1", "2"], ["1", "3"]).item() == pytest.approx(0.5)
    assert metric(["4"], ["4"]).item() == pytest.approx(1.0)
    assert metric.compute().item() == pytest.approx(2 / 3)


def test_merge_state_sums_counts() -> None:
    first, second = ExactMatch(), ExactMatch()
    first.update(PREDS, GOLDS)  # 3 / 5
    second.update(["1", "2", "3"], ["1", "2", "4"])  # 2 / 3
    first.merge_state(second)
    assert int(first.correct) == 5 and int(first.total) == 8
    assert first.compute().item() == pytest.approx(5 / 8)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # merge_state-only metric
def test_summed_states_match_single_pass() -> None:
    parts = [ExactMatch(), ExactMatch()]
    parts[0].update(PREDS[:2], GOLDS[:2])
    parts[1].update(PREDS[2:], GOLDS[2:])
    whole = ExactMatch()
    whole.update(PREDS, GOLDS)
    assert int(sum(m.correct for m in parts)) == int(whole.correct) == 3
    assert int(sum(m.total for m in parts)) == int(whole.total) == 5

    merged = ExactMatch()
    merged.merge_state({"correct": parts[0].correct, "total": parts[0].total})
    merged.merge_state(parts[1])
    assert merged.compute().item() == pytest.approx(whole.compute().item())


def test_reset_clears_counts() -> None:
    metric = ExactMatch()
    metric.update(PREDS, GOLDS)
    metric.reset()
    assert int(metric.correct) == 0 and int(metric.total) == 0
    metric.update(["2"], ["3"])
    assert metric.compute().item() == 0.0


def test_length_mismatch_raises() -> None:
    metric = ExactMatch()
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        metric.update(["1", "2"], ["1"])
    assert int(metric.total) == 0


def test_single_string_is_rejected() -> None:
    with pytest.raises(TypeError):
        ExactMatch().update("12", "12")


def test_metric_flags() -> None:
    assert ExactMatch.higher_is_better is True
    assert ExactMatch.full_state_update is False

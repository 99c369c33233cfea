"""Logistic steering: the normal of a logistic regression separating each pair's two halves.

Rows are pair-centred (each pair minus its midpoint: ``+d/2`` labelled +1, ``-d/2`` labelled -1),
the regression has no intercept and an L2 penalty (``options.C``, sklearn's convention:
``0.5 |w|^2 + C * sum(log-loss)``), and ``v = w / |w|``, added as ``alpha * v``. Like PCA's, the
vector is scaled to the norm of the mean difference, so every normalization reads as CAA's.
Fitted in torch (full-batch L-BFGS, all layers at once, float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from steerlight.steering.method import SteeringMethod, register
from steerlight.steering.pca import caa_length, paired


@dataclass(frozen=True)
class LogisticSettings:
    C: float = 1.0
    """Inverse L2 strength, as sklearn's `LogisticRegression(C=...)`."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.C) and self.C > 0):
            raise ValueError(f"C must be a positive number, got {self.C}")


def logistic_weights(rows: Tensor, y: Tensor, C: float, steps: int = 200) -> Tensor:
    """Weights (L, H) of a no-intercept logistic regression per layer on rows (N, L, H) with
    labels y (N,) in {-1, +1}, minimising ``0.5 |w|^2 + C * sum(log(1 + exp(-y w.x)))``."""
    x = rows.double().transpose(0, 1)  # (L, N, H)
    w = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], max_iter=steps, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )
    y = y.double()

    def closure() -> Tensor:
        opt.zero_grad()
        margins = torch.einsum("lnh,lh->ln", x, w) * y
        # per-layer problems are independent, so their sum is minimised layer by layer
        loss = (0.5 * w.pow(2).sum(1) + C * torch.nn.functional.softplus(-margins).sum(1)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def pair_centred(acts: Tensor, labels: Tensor, pairs: str) -> tuple[Tensor, Tensor]:
    """Rows (2P, L, H): each pair's halves minus its midpoint; labels +1 (good), -1 (bad)."""
    pos, neg = paired(acts, labels, pairs, "logistic")
    mid = (pos + neg) / 2
    y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))])
    return torch.cat([pos - mid, neg - mid]), y


@register
class Logistic(SteeringMethod):
    """The unit normal of a no-intercept logistic regression on pair-centred rows."""

    name = "logistic"
    settings = LogisticSettings
    help = "adds alpha * (unit normal of a logistic regression on the pairs; options.C)"

    def fit_key(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        C = self.options(hparams.get("options")).C
        return {"icl": None, "direction": {"method": self.name, "C": C}}

    def direction(self, acts: Tensor, labels: Tensor, pairs: str, key: Mapping) -> Tensor:
        rows, y = pair_centred(acts, labels, pairs)
        w = logistic_weights(rows, y, key["C"])
        unit = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-30)
        return caa_length(unit, *paired(acts, labels, pairs, self.name))

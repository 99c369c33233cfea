"""PCA steering: the first principal component of the contrastive pairs, added as ``alpha * v``.

Two centrings (``model.options.center``), as the peers compute them:

- ``pca_diff`` (repeng): the pair differences ``h+ - h-``, mean-centred, then PCA;
- ``pca_center`` (IBM activation-steering, repeng): each pair centred on its midpoint, then PCA
  over the 2N rows.

The sign is a majority vote: positives project higher than their negatives in most pairs. The
vector is the unit component times the norm of the mean difference, so ``normalization: none``
gives it CAA's length; ``unit`` and ``mean_norm`` scale it exactly as CAA's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from steerlight.errors import SteerlightError
from steerlight.steering.method import SteeringMethod, register

Center = Literal["pca_diff", "pca_center"]


@dataclass(frozen=True)
class PCASettings:
    center: Center = "pca_diff"
    """`pca_diff`: PCA of the mean-centred pair differences; `pca_center`: each pair centred
    on its midpoint, PCA over both rows."""

    def __post_init__(self) -> None:
        if self.center not in ("pca_diff", "pca_center"):
            raise ValueError(f"center must be pca_diff or pca_center, got {self.center!r}")


def paired(acts: Tensor, labels: Tensor, pairs: str, method: str) -> tuple[Tensor, Tensor]:
    """The positive and negative rows of each pair, (P, L, H) each: corrupted pairs alternate
    good, bad (`steering.fit.corrupted_pairs`)."""
    labels = labels.bool()
    pos, neg = acts[0::2], acts[1::2]
    if pairs != "corrupted" or len(acts) % 2 or not (labels[0::2].all() and not labels[1::2].any()):
        raise SteerlightError(
            f"method {method} fits on contrastive pairs: use model.pairs: corrupted (got {pairs!r})"
        )
    return pos.double(), neg.double()


def first_component(rows: Tensor) -> Tensor:
    """The first principal component per layer of rows (N, L, H), mean-centred: (L, H)."""
    x = (rows - rows.mean(0)).transpose(0, 1)  # (L, N, H)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:, 0, :]


def majority_sign(v: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """`v` (L, H) flipped per layer where fewer than half the pairs project positives higher."""
    higher = (torch.einsum("plh,lh->pl", pos - neg, v) > 0).double().mean(0)
    return torch.where((higher >= 0.5)[:, None], v, -v)


def caa_length(unit: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Unit directions (L, H) scaled per layer to the norm of the mean pair difference (CAA's
    vector), so every normalization reads as CAA's; float32."""
    return (unit * (pos - neg).mean(0).norm(dim=-1, keepdim=True)).float()


def pca_directions(acts: Tensor, labels: Tensor, pairs: str, center: Center) -> Tensor:
    """Unit first components per layer (L, H), signed by majority vote (float64)."""
    pos, neg = paired(acts, labels, pairs, "pca")
    if center == "pca_diff":
        v = first_component(pos - neg)
    else:
        mid = (pos + neg) / 2
        v = first_component(torch.cat([pos - mid, neg - mid]))
    return majority_sign(v, pos, neg)


@register
class PCA(SteeringMethod):
    """The first principal component of the pair differences, added as ``alpha * v``."""

    name = "pca"
    settings = PCASettings
    help = "adds alpha * (first principal component of the pairs; options.center)"

    def fit_key(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        center = self.options(hparams.get("options")).center
        return {"icl": None, "direction": {"method": self.name, "center": center}}

    def direction(self, acts: Tensor, labels: Tensor, pairs: str, key: Mapping) -> Tensor:
        v = pca_directions(acts, labels, pairs, key["center"])
        return caa_length(v, *paired(acts, labels, pairs, self.name))

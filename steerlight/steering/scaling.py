"""How a fitted vector is scaled before `alpha` multiplies it (`model.normalization`)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Normalization = Literal["none", "unit", "mean_norm"]


def scale_vectors(vectors: Tensor, how: Normalization, act_norm: Tensor | None = None) -> Tensor:
    """`none`: as fitted; `unit`: unit norm; `mean_norm`: unit norm times the mean activation norm.

    `vectors` is (..., H) and `act_norm` (...) the mean activation norm at the same layers; with
    `mean_norm`, alpha reads as a fraction of a typical residual-stream norm at that layer.
    """
    if how == "none":
        return vectors
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if how == "unit":
        return unit
    if act_norm is None:
        raise ValueError("mean_norm scaling needs the mean activation norm")
    return unit * act_norm[..., None]

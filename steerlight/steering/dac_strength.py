"""DAC's strength rule: ``alpha_t = clip(KL(p_t || q_t) on U, 0, alpha_max)`` per row and step.

``p_t`` is the unsteered next-token distribution, ``q_t`` the one steered at ``alpha_max``, and
``U`` the union of their top-``top_p`` nuclei (`steerlight.steering.dac` generates with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_FLOOR = -80.0
"""Log-probabilities are floored here before exp (see `dac_kl`)."""
_BUCKETS = 2048
_BUCKET_SPAN = 40.0
"""Nats below a row's most likely token that the buckets of `nucleus_mask` cover."""


def nucleus_mask(probs: Tensor, top_p: float) -> Tensor:
    """Boolean mask (B, V) of the top-p nucleus: the smallest set of most likely tokens whose
    cumulative probability reaches `top_p`. The most likely token is always kept.

    No full sort: tokens are bucketed by log-probability (2048 buckets over 40 nats below the
    row's max, the rest in the last one). Buckets above the one where the cumulative mass
    reaches `top_p` are in, those below are out, and only that edge bucket is sorted. This costs
    a few passes over the vocabulary even for flat distributions, where the nucleus holds most
    of the vocabulary and a sort would dominate a decoding step on CPU.
    """
    rows = torch.arange(probs.shape[0], device=probs.device)
    top1 = probs.argmax(-1)
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    if top_p <= 0.0:
        return torch.zeros_like(probs, dtype=torch.bool).index_put_((rows, top1), rows >= 0)
    log_p = probs.log()
    depth = (log_p.amax(-1, keepdim=True) - log_p) * (_BUCKETS / _BUCKET_SPAN)
    bucket = depth.clamp(max=_BUCKETS - 1).long()  # 0 holds the most likely tokens
    exact = probs.double()  # masses in float64: no rounding trouble near top_p = 1
    mass = exact.new_zeros(probs.shape[0], _BUCKETS).scatter_add_(1, bucket, exact)
    before = F.pad(mass.cumsum(-1)[:, :-1], (1, 0))  # mass of all more likely buckets
    crossing = (before < top_p) & (before + mass >= top_p)
    # the edge bucket (none when the total mass stays below top_p: every token is in)
    edge = torch.where(crossing.any(-1), crossing.int().argmax(-1), _BUCKETS)[:, None]
    mask = bucket < edge
    in_edge = bucket == edge
    width = int(in_edge.sum(-1).max())
    if width:
        # the edge bucket's tokens, most likely first (padded with -1 where a row has fewer)
        vals, idx = torch.where(in_edge, probs, -1.0).topk(width, dim=-1)
        ours = vals >= 0
        vals = torch.where(ours, exact.gather(1, idx), 0.0)
        start = before.gather(1, edge.clamp(max=_BUCKETS - 1))
        mass_before = start + F.pad(vals.cumsum(-1)[:, :-1], (1, 0))
        keep = ((mass_before < top_p) & ours) | mask.gather(1, idx)
        mask.scatter_(1, idx, keep)
    mask[rows, top1] = True  # never empty
    return mask


def dac_kl(p_logits: Tensor, q_logits: Tensor, top_p: float, batchmean: bool = False) -> Tensor:
    """KL(p || q) restricted to the union of both top-p nuclei, both renormalised there: (B,).

    With `batchmean` the KL is divided by the size of that union.
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(
            f"p and q logits differ in shape: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}"
        )
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    log_p, log_q = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    # Floored before exp: below e^-80 exp gives denormal floats, ~50x slower on CPU. Such tokens
    # hold < 1e-30 of the mass, so no nucleus, mass or KL changes in float32.
    p, q = log_p.clamp(min=_LOG_FLOOR).exp(), log_q.clamp(min=_LOG_FLOOR).exp()
    union = nucleus_mask(p, top_p) | nucleus_mask(q, top_p)
    zero = torch.zeros((), device=p.device)
    mass_p = torch.where(union, p, zero).sum(-1)
    mass_q = torch.where(union, q, zero).sum(-1)
    # renormalised on U: p_U = p / mass_p, q_U = q / mass_q, so
    # KL(p_U || q_U) = sum_U p (log p - log q) / mass_p - log mass_p + log mass_q
    support = union & (log_p > float("-inf"))  # 0 log 0 = 0
    cross = torch.where(support, p * (log_p - log_q), zero).sum(-1)
    kl = cross / mass_p - mass_p.log() + mass_q.log()
    if batchmean:
        kl = kl / union.sum(-1)
    return kl


def clip_alpha(kl: Tensor, alpha_max: float) -> Tensor:
    """``clip(kl, 0, alpha_max)``; a negative `alpha_max` gives ``-clip(kl, 0, |alpha_max|)``."""
    bound = abs(float(alpha_max))
    return kl.clamp(0.0, bound) * (-1.0 if alpha_max < 0 else 1.0)


def dac_alpha(
    p_logits: Tensor,
    q_logits: Tensor,
    top_p: float,
    alpha_max: float,
    batchmean: bool = False,
) -> Tensor:
    """DAC's strength per row: ``clip(KL(p || q) on U, 0, alpha_max)``, shape (B,).

    Args:
        p_logits: (B, V) unsteered next-token logits.
        q_logits: (B, V) next-token logits steered at `alpha_max`.
        top_p: nucleus mass; U is the union of the nuclei of ``softmax(p)`` and ``softmax(q)``.
        alpha_max: the upper clip (the sign is kept for a negative value).
        batchmean: divide the KL by ``|U|`` (the reference code's ``batchmean``).
    """
    return clip_alpha(dac_kl(p_logits, q_logits, top_p, batchmean), alpha_max)

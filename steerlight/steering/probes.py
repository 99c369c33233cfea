"""Per-layer logistic-regression probes in torch, scored by held-out AUC; they rank layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Probes:
    """One linear probe per layer on standardised activations, and its held-out AUC."""

    weight: Tensor  # (L, H), acting on (h - mean) / std
    bias: Tensor  # (L,)
    mean: Tensor  # (L, H)
    std: Tensor  # (L, H)
    auc: Tensor  # (L,) held-out AUC

    def scores(self, acts: Tensor) -> Tensor:
        """Logits (N, L) for activations (N, L, H)."""
        z = (acts.float() - self.mean) / self.std
        return torch.einsum("nlh,lh->nl", z, self.weight) + self.bias

    def best_layer(self) -> int:
        return int(self.auc.argmax())


def auc(scores: Tensor, labels: Tensor) -> Tensor:
    """ROC AUC per column of `scores` (N, K) for boolean `labels` (N,), ties counted half."""
    labels = labels.bool()
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both positive and negative examples")
    greater = (pos[:, None, :] > neg[None, :, :]).float().mean((0, 1))
    ties = (pos[:, None, :] == neg[None, :, :]).float().mean((0, 1))
    return greater + 0.5 * ties


def held_out_split(groups: Tensor, fraction: float, seed: int) -> Tensor:
    """A boolean test mask that keeps each group (e.g. a contrastive pair) on one side."""
    unique = groups.unique()
    gen = torch.Generator().manual_seed(seed)
    n_test = max(1, round(fraction * len(unique)))
    test_groups = unique[torch.randperm(len(unique), generator=gen)[:n_test]]
    return torch.isin(groups, test_groups)


def fit_probes(
    acts: Tensor,
    labels: Tensor,
    groups: Tensor | None = None,
    held_out: float = 0.25,
    l2: float = 1e-2,
    steps: int = 100,
    seed: int = 0,
) -> Probes:
    """Fit all layers' probes at once (full-batch L-BFGS) and score them on a held-out part.

    `groups` (N,) ties rows that must not straddle the split, such as the two halves of a pair.
    """
    acts, labels = acts.float(), labels.bool()
    groups = torch.arange(len(labels)) if groups is None else groups
    test = held_out_split(groups, held_out, seed)
    if test.all() or (~test).all():
        raise ValueError("too few examples to hold some out for probe AUC")
    x, y = acts[~test], labels[~test].float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = ((x - mean) / std).transpose(0, 1)  # (L, N, H)
    n_layers, _, hidden = z.shape
    w = torch.zeros(n_layers, hidden, requires_grad=True)
    b = torch.zeros(n_layers, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        logits = torch.einsum("lnh,lh->ln", z, w) + b[:, None]
        target = y.expand_as(logits)
        # Summing per-layer mean losses keeps the layers' problems independent.
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            .mean(1)
            .sum()
            + l2 * w.pow(2).sum()
        )
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    probes = Probes(w.detach(), b.detach(), mean, std, torch.zeros(n_layers))
    probes.auc = auc(probes.scores(acts[test]), labels[test])
    return probes

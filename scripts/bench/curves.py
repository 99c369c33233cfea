"""Part ``curves``: a val pass's time against questions and prompt length, for each decoding path.

The paths are the settings of `steerlight.model.generation.GenerationSettings`, all decoding by
row refill over ``--curves-slots`` rows: ``plain`` (no fast path), ``prefix reuse`` (the shared
prompt prefix runs once) and ``fast`` (prefix reuse and the KV cache written in place). The
compiled static-cache decode of issue 26 is not built, so it has no curve.

The prompts are few-shot shaped: a shared prefix of random ids (the exemplars) and a question
of its own (8-24 random ids) per row, on a small random-weight Llama whose generation has a
fixed length (``--curves-new-tokens``; an end-of-sequence id it cannot emit), so a point's work
is exactly its questions x tokens. Two sweeps: questions (``--curves-questions``) at the longest
prefix, and shared-prefix length (``--curves-prefix``) at ``--curves-at-questions``. Each point
times the paths in interleaved rounds (median of ``--curves-repeats``), and the three must give
the same tokens. A least-squares line per path is fitted to each sweep (seconds per question,
seconds per prefix token). The figure (two panels) goes beside ``--out`` as
``<stem>.curves.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from bench_models import random_llama
from common import Result, median, timed_rounds
from growth import figure_path, line_fit

PATHS = {
    "plain": {"prefix_reuse": False, "cache_in_place": False},
    "prefix reuse": {"prefix_reuse": True, "cache_in_place": False},
    "fast": {"prefix_reuse": True, "cache_in_place": True},
}
COLORS = {"plain": "tab:gray", "prefix reuse": "tab:blue", "fast": "tab:green"}


class _RandomIds:
    """The tokenizer attributes refill reads, for prompts of random ids (nothing to decode)."""

    pad_token_id = 0

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id  # outside the vocabulary: a fixed length

    def batch_decode(self, tokens: torch.Tensor, **_: Any) -> list[str]:
        return [""] * len(tokens)


def prompts(n: int, prefix: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): `n` left-padded prompts, a shared `prefix` then 8-24 ids of their own."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(2, vocab, (prefix,), generator=g)
    rows = [
        torch.cat([shared, torch.randint(2, vocab, (int(k),), generator=g)])
        for k in torch.randint(8, 25, (n,), generator=g)
    ]
    width = max(len(r) for r in rows)
    ids, mask = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def time_point(args: argparse.Namespace, model: Any, n: int, prefix: int) -> dict[str, Any]:
    """Each path's val pass over `n` prompts with a `prefix`-token shared part."""
    from steerlight.model.generation import GenerationSettings
    from steerlight.model.refill import refill_generate

    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in prompts(n, prefix, model.config.vocab_size, args.seed))
    tok = _RandomIds(model.config.vocab_size)
    base = GenerationSettings(max_new_tokens=args.curves_new_tokens)

    def run(path: str):
        settings = replace(base, **PATHS[path])
        return lambda: refill_generate(model, tok, ids, mask, settings, (), args.curves_slots)

    warm = {p: lambda: None for p in PATHS}  # (`bench_curves` warms the process once)
    times, out = timed_rounds(
        {p: run(p) for p in PATHS}, dict.fromkeys(PATHS, args.curves_repeats), device, warm
    )
    same = all(torch.equal(out[p].tokens, out["plain"].tokens) for p in PATHS)
    seconds = {p: median(t) for p, t in times.items()}
    return {"seconds": seconds, "times_s": times, "tokens_identical": same}


def bench_curves(args: argparse.Namespace, device: torch.device) -> Result:
    """Part curves: the two sweeps, their line fits and the figure."""
    sizes = {"hidden": args.curves_hidden, "layers": args.curves_layers}
    sized = argparse.Namespace(**{**vars(args), **sizes, "vocab": args.curves_vocab})
    model = random_llama(sized, device)
    model.generation_config.eos_token_id = None
    time_point(args, model, 2, 16)  # one-off costs (allocator growth, lazy imports) land here
    longest, at = max(args.curves_prefix), args.curves_at_questions
    sweeps = {
        "questions": {n: time_point(args, model, n, longest) for n in args.curves_questions},
        "prefix": {p: time_point(args, model, at, p) for p in args.curves_prefix},
    }
    fits = {
        name: {
            path: line_fit([float(x) for x in pts], [pt["seconds"][path] for pt in pts.values()])
            for path in PATHS
        }
        for name, pts in sweeps.items()
    }
    same = all(pt["tokens_identical"] for points in sweeps.values() for pt in points.values())
    top = sweeps["prefix"][longest]["seconds"]
    ratio = top["plain"] / top["fast"]
    path = figure_path(args.out, "curves")
    draw(sweeps, fits, f"{longest}-token prefix, {at} questions", path)
    per_q = fits["questions"]
    return Result(
        "curves",
        "Cost curves: val-pass time vs questions and prompt length, per decoding path",
        ratio,
        f"plain / fast at {at} questions with a {longest}-token shared prefix",
        "same tokens on every path (a curve, no speed target)",
        same,
        ", ".join(f"{p} {1000 * per_q[p]['slope_s']:.0f} ms/question" for p in PATHS)
        + f" (prefix {longest}); figure {path.name}",
        sweeps["prefix"][longest]["times_s"],
        {
            "model": f"random Llama, hidden {args.curves_hidden}, {args.curves_layers} layers, "
            f"vocabulary {args.curves_vocab}",
            "slots": args.curves_slots,
            "new_tokens": args.curves_new_tokens,
            "tokens_identical": same,
            "sweeps": {
                k: {
                    str(x): {n: pt[n] for n in ("seconds", "tokens_identical")}
                    for x, pt in v.items()
                }
                for k, v in sweeps.items()
            },
            "fits": fits,
            "figure": str(path),
        },
    )


def _kept(point: dict[str, Any]) -> dict[str, Any]:
    """A point as the report keeps it: its medians and whether the paths agreed."""
    return {"seconds": point["seconds"], "tokens_identical": point["tokens_identical"]}


def draw(sweeps: dict, fits: dict, subtitle: str, path: Path) -> None:
    """Two panels (questions, prefix length), one line per path; fitted lines dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    units = {"questions": ("questions", "question"), "prefix": ("shared prefix", "prefix token")}
    for ax, (name, points) in zip(fig.subplots(1, 2), sweeps.items(), strict=True):
        x = list(points)
        for p in PATHS:
            fit = fits[name][p]
            line = [fit["slope_s"] * v + fit["intercept_s"] for v in x]
            ax.plot(x, line, "--", color=COLORS[p], alpha=0.5, linewidth=1)
            label = f"{p}: {1000 * fit['slope_s']:.1f} ms per {units[name][1]}"
            ax.plot(x, [points[v]["seconds"][p] for v in x], "o-", color=COLORS[p], label=label)
        ax.set_xlabel(f"{units[name][0]} (tokens)" if name == "prefix" else units[name][0])
        ax.set_ylabel("val-pass time (s)")
        ax.set_xticks(x)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
    fig.suptitle(f"Val-pass time per decoding path (sweeps at {subtitle})", fontsize=11)
    fig.savefig(path, dpi=110)

"""Part ``growth``: how a val pass's cost grows with questions, model width and new tokens, for
plain, CAA and DAC generation; and the peak memory of CAA vs DAC (three KV caches).

A val pass is what a trial's validation does: `steered_generate` (row refill for plain and CAA,
DAC's own three-cache loop) over N questions in batches of ``--growth-batch``. It runs on the
random-weight Llama of parts hook and dac, whose generation has a fixed length (its
end-of-sequence id is one it cannot emit), not on the embedded tiny model: a fixed length makes
a point's work exactly N questions x T tokens, so time can be read against max new tokens (the
tiny model stops by itself after a few dozen tokens, past which its curve would go flat and
measure where it stops, not what a token costs), and a random model can have any width.

Three sweeps: questions (``--growth-questions``), hidden size (``--growth-hidden``; 2.75 x
hidden MLP, ``--growth-layers``, ``--heads``, ``--vocab``) and max new tokens
(``--growth-tokens``), the other sizes held at ``--growth-at-*``. Every point times the three
methods in interleaved rounds (median of ``--growth-repeats``). A least-squares line is fitted
to time vs questions and vs tokens: slope, intercept, R^2, and ``bend``, the last segment's
slope over the first's (1: straight). Width gets the exponent k of ``time ~ hidden^k`` (a
log-log line): the layers' matmuls grow as hidden^2, the lm_head and attention as hidden, and
the fixed cost of a decoding step (Python, kernel launches) not at all, so k lies between 0 and
2 and rises with width. The figure (three panels) goes beside ``--out`` as
``<stem>.growth.png``.

Peak memory: plain, CAA and DAC generating ``--memory-batch`` prompts of
``--memory-prompt-tokens`` random ids for ``--memory-new-tokens`` tokens on the questions
sweep's model, one after another in this process. What is measured is the peak of the tensor
bytes held during the call above those held before it: exact at the allocator, and untouched by
what ran before (Python objects and malloc's slack are not in it). CUDA:
``torch.cuda.max_memory_allocated``; CPU, where PyTorch keeps no peak: the running sum of the
CPU allocator's allocations and frees as the profiler records them. (Peak RSS of a fresh
process was tried first; malloc's caching moved it by tens of MiB, and not even monotonically
with model size.) The KV-cache bytes are computed too (analytic). The part's ratio is DAC's
extra peak over CAA's. CAA's peak comes in the prefill: its cache plus the prefill's transient
activations. DAC's comes after it, when the cache is copied into the 2B-row probe cache: three
caches and little else. So the ratio stays below 3, and nears it as the caches outgrow the
prefill's transients (deeper models, longer prompts).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_models import (
    FixedLengthTokenizer,
    RandomBench,
    left_padded,
    random_llama,
    steering_vector,
)
from common import DTYPES, Result, median, n_params
from torch import Tensor, nn

METHODS = ("plain", "CAA", "DAC")
COLORS = {"plain": "tab:gray", "CAA": "tab:blue", "DAC": "tab:red"}
AXES = {"questions": "val questions", "hidden": "hidden size", "tokens": "max new tokens"}
"""Each sweep's name and its x axis, in the figure's order."""
LINEAR_R2 = 0.99
"""Below this R^2 a sweep that should be a line is reported as not one."""
BEND = 1.25
"""A last-segment slope this much above the first one's (or below its inverse) is a bend."""
ALPHA = 2.0
"""CAA's strength and DAC's alpha_max (as in part dac); random weights make any value work."""
MiB = 2**20
PAGE = 4096


# -- one val pass ----------------------------------------------------------------------------


def methods(
    model: nn.Module, tok: Any, layer: int, vector: Tensor, new_tokens: int
) -> dict[str, Callable[[Tensor, Tensor], Any]]:
    """Plain, CAA and DAC generation of one left-padded batch, called as a trial's val step
    calls it (`steered_generate`)."""
    from steerlight.model.generation import GenerationSettings
    from steerlight.steering.apply import SteeringConfig, steered_generate
    from steerlight.steering.dac import DACSettings

    settings = GenerationSettings(max_new_tokens=new_tokens)
    dac = DACSettings(alpha_max=ALPHA, top_p=0.9)

    def method(name: Any) -> Callable[[Tensor, Tensor], Any]:
        config = SteeringConfig(name, layer, ALPHA, "prompt_end+generated", "none", dac)
        return lambda ids, mask: steered_generate(
            model, tok, ids, mask, config, vector, settings, ()
        )

    return {"plain": method("none"), "CAA": method("caa"), "DAC": method("dac")}


def val_pass(
    model: nn.Module, tok: Any, prompts: list[str], batch: int, new_tokens: int, seed: int
) -> dict[str, Callable[[], int]]:
    """Each method's val pass over `prompts` in batches of `batch`; a call returns the number
    of tokens it generated."""
    device = next(model.parameters()).device
    fixed = FixedLengthTokenizer(tok, model.config.vocab_size)
    vector = steering_vector(model.config.hidden_size, seed).to(device)
    batches = [
        left_padded(tok, prompts[i : i + batch], device) for i in range(0, len(prompts), batch)
    ]
    layer = model.config.num_hidden_layers // 2
    per_batch = methods(model, fixed, layer, vector, new_tokens)

    def whole(run: Callable[[Tensor, Tensor], Any]) -> Callable[[], int]:
        return lambda: sum(run(ids, mask).tokens.numel() for ids, mask in batches)

    return {name: whole(run) for name, run in per_batch.items()}


def prompts_of(bench: RandomBench, n: int) -> list[str]:
    """The first `n` prompts: test questions, then train ones (the synthetic test has 100)."""
    rows = bench.rows["test"] + bench.rows["train"]
    rows = (rows * math.ceil(n / len(rows)))[:n]
    return [f"Question: {r['question']}\nAnswer:" for r in rows]


def time_point(
    runs: dict[str, Callable[[], int]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], int]:
    """Each method's timed repeats, interleaved round by round, and the tokens a pass makes."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts = set()
    for _ in range(repeats):
        for name, run in runs.items():
            _sync(device)
            start = time.perf_counter()
            counts.add(run())
            _sync(device)
            times[name].append(time.perf_counter() - start)
    assert len(counts) == 1, f"the methods generated different numbers of tokens: {counts}"
    return times, counts.pop()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the sweeps ------------------------------------------------------------------------------


@dataclass
class Sweep:
    """Val-pass times of every method along one size, the other two held fixed."""

    name: str
    values: list[int]
    fixed: dict[str, int]
    times_s: dict[str, list[list[float]]] = field(default_factory=dict)
    """Method -> the timed repeats at each value."""

    def medians(self, method: str) -> list[float]:
        """The method's median time at each value."""
        return [median(ts) for ts in self.times_s[method]]

    def spread(self) -> float:
        """The largest (slowest / fastest) repeat ratio of any point: the timing noise."""
        return max(max(ts) / min(ts) for runs in self.times_s.values() for ts in runs)

    def as_json(self) -> dict[str, Any]:
        """The sweep's entry in the report (``details.sweeps``)."""
        return {
            "x": AXES[self.name],
            "values": self.values,
            "fixed": self.fixed,
            "median_s": {m: self.medians(m) for m in METHODS},
            "times_s": self.times_s,
            "repeat_spread": self.spread(),
        }


def run_sweeps(
    args: argparse.Namespace,
    device: torch.device,
    bench: RandomBench,
    progress: Callable[[str], None],
) -> dict[str, Sweep]:
    """The three sweeps, in the figure's order (the width one runs last: it builds models)."""
    at = {"questions": args.growth_at_questions, "hidden": args.growth_at_hidden}
    at["tokens"] = args.growth_at_tokens
    grids = {
        "questions": args.growth_questions,
        "tokens": args.growth_tokens,
        "hidden": args.growth_hidden,
    }
    models: dict[int, nn.Module] = {}

    def model_of(hidden: int) -> nn.Module:
        if hidden not in models:
            models.clear()  # one model at a time: the wide ones are large
            shape = {"hidden": hidden, "layers": args.growth_layers}
            models[hidden] = random_llama(argparse.Namespace(**{**vars(args), **shape}), device)
            # Untimed: kernel selection, lazy imports and allocator growth land in no timed run.
            for run in val_pass(
                models[hidden], bench.tokenizer, prompts_of(bench, 2), 2, 2, 0
            ).values():
                run()
        return models[hidden]

    sweeps: dict[str, Sweep] = {}
    for name, values in grids.items():
        progress(f"growth: val pass vs {AXES[name]} {list(values)}, plain / CAA / DAC")
        sweep = Sweep(name, list(values), {k: v for k, v in at.items() if k != name})
        sweep.times_s = {m: [] for m in METHODS}
        for value in values:
            size = {**at, name: value}
            runs = val_pass(
                model_of(size["hidden"]),
                bench.tokenizer,
                prompts_of(bench, size["questions"]),
                args.growth_batch,
                size["tokens"],
                args.seed,
            )
            times, generated = time_point(runs, args.growth_repeats, device)
            # Fixed length: every pass does exactly questions x tokens of decoding.
            assert generated == size["questions"] * size["tokens"], (size, generated)
            for m in METHODS:
                sweep.times_s[m].append(times[m])
        sweeps[name] = sweep
    return {name: sweeps[name] for name in AXES}


# -- fits ------------------------------------------------------------------------------------


def line_fit(x: list[float], y: list[float]) -> dict[str, float | None]:
    """Least-squares line ``y = slope x + intercept``, its R^2, and the bend (last segment's
    slope / first segment's; None with fewer than three points)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((b - my) ** 2 for b in y)
    ss_res = sum((b - slope * a - intercept) ** 2 for a, b in zip(x, y, strict=True))
    bend = None
    if n >= 3:
        first = (y[1] - y[0]) / (x[1] - x[0])
        last = (y[-1] - y[-2]) / (x[-1] - x[-2])
        bend = last / first if first > 0 else math.inf
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope_s": slope, "intercept_s": intercept, "r2": r2, "bend": bend}


def exponent_fit(x: list[float], y: list[float]) -> dict[str, Any]:
    """k of ``y ~ x^k`` (a line through the logs), and the k of each segment."""
    lx, ly = [math.log(a) for a in x], [math.log(b) for b in y]
    local = [(ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i]) for i in range(len(x) - 1)]
    return {"exponent": line_fit(lx, ly)["slope_s"], "segment_exponents": local}


def fits(sweeps: dict[str, Sweep]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per sweep and method: a line (questions, tokens) or an exponent (hidden)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, sweep in sweeps.items():
        fit = exponent_fit if name == "hidden" else line_fit
        out[name] = {m: fit(sweep.values, sweep.medians(m)) for m in METHODS}
    return out


def straight(fit: dict[str, Any]) -> bool:
    """Whether a line fit is a line: R^2 high and no bend beyond `BEND` either way."""
    bend = fit["bend"]
    return fit["r2"] >= LINEAR_R2 and (bend is None or 1 / BEND <= bend <= BEND)


def findings(sweeps: dict[str, Sweep], fitted: dict[str, dict[str, dict]], batch: int) -> list[str]:
    """Where growth is not linear in questions or tokens, and why; and the width exponents."""
    notes = []
    for name in ("questions", "tokens"):
        noise = sweeps[name].spread()
        for m in METHODS:
            fit = fitted[name][m]
            if straight(fit):
                continue
            bend = fit["bend"]
            what = f"{m} vs {AXES[name]}: R^2 {fit['r2']:.4f}, bend {_fmt(bend)}"
            if name == "tokens" and bend is not None and bend > BEND:
                why = (
                    "each decoding step attends to every cached column and the KV cache grows "
                    "by concatenation (a copy of the whole cache) every step, so a step costs "
                    "more the longer the sequence: O(T P + T^2) per row, which shows once T is "
                    "no longer small against the prompt"
                )
                if m == "DAC":
                    why += "; DAC does it in three caches and also appends to each stream's "
                    why += "per-column records (ids, mask, strength, step) every step"
            elif name == "questions" and any(q % batch for q in sweeps[name].values):
                why = (
                    f"a question count that is not a multiple of the batch ({batch}) ends in a "
                    "partial batch, which decodes as many steps as a full one, and a step's "
                    "cost is mostly fixed at small width: time follows the number of batches"
                )
            else:
                why = (
                    "every batch does the same work up to its prompt lengths, so this is "
                    f"timing noise, not a cost trend (repeats differ by up to {noise:.2f}x; "
                    "more --growth-repeats, or a quieter machine)"
                )
            notes.append(f"{what}: {why}")
    k = {m: fitted["hidden"][m]["exponent"] for m in METHODS}
    width = sweeps["hidden"]
    plain = width.medians("plain")
    dac_over_plain = [d / p for d, p in zip(width.medians("DAC"), plain, strict=True)]
    notes.append(
        "width: time ~ hidden^k with k = "
        + ", ".join(f"{m} {v:.2f}" for m, v in k.items())
        + ": not linear by design (the layers' matmuls grow as hidden^2, the lm_head and "
        "attention as hidden, a step's fixed cost not at all, so k rises towards 2 with width). "
        f"DAC / plain goes from {dac_over_plain[0]:.2f}x at hidden {width.values[0]} to "
        f"{dac_over_plain[-1]:.2f}x at {width.values[-1]}: DAC's extra work per step is mostly "
        "vocabulary-wide (two more rows of lm_head, softmax and nuclei over the vocabulary), "
        "which grows as hidden or not at all, while the layers that all methods share grow as "
        "hidden^2"
    )
    return notes


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


# -- peak memory -----------------------------------------------------------------------------


class IdsOnly:
    """The tokenizer attributes generation reads, for prompts of random ids (nothing to say)."""

    pad_token_id = 0

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id  # outside the vocabulary: a fixed length

    def batch_decode(self, tokens: Tensor, **_: Any) -> list[str]:
        return [""] * len(tokens)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's C++ side prints a start and a stop line to fd 2 each time; not ours."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """The most bytes of tensors `fn` held at once beyond those alive before it (allocator
    level: no Python objects, no malloc slack). CUDA: `torch.cuda.max_memory_allocated`. CPU:
    PyTorch tracks no CPU peak, so the profiler records every allocation and free of the CPU
    allocator and the peak of their running sum is taken."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        held += event.nbytes()  # negative for a free
        peak = max(peak, held)
    return peak


def measure_memory(args: argparse.Namespace, model: nn.Module) -> dict[str, Any]:
    """Each method's extra peak memory generating ``--memory-batch`` prompts of
    ``--memory-prompt-tokens`` random ids."""
    device = next(model.parameters()).device
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, vocab, (args.memory_batch, args.memory_prompt_tokens), generator=g)
    ids, mask = ids.to(device), torch.ones_like(ids, device=device)
    vector = steering_vector(hidden, args.seed).to(device)
    runs = methods(model, IdsOnly(vocab), layers // 2, vector, args.memory_new_tokens)
    peaks = {}
    for m, run in runs.items():
        run(ids[:1, :4], mask[:1, :4])  # lazy imports and one-off buffers: not the method's
        gc.collect()
        peaks[m] = peak_bytes(lambda run=run: run(ids, mask), device)
    # Keys and values of every layer and column: one B-row cache for plain and CAA, three
    # (applied, unsteered, probe) for DAC.
    columns = args.memory_prompt_tokens + args.memory_new_tokens
    kv = 2 * layers * args.memory_batch * columns * hidden * DTYPES[args.dtype].itemsize
    how = "CUDA max_memory_allocated" if device.type == "cuda" else "CPU allocator (profiler)"
    caches = {"plain": kv / MiB, "CAA": kv / MiB, "DAC": 3 * kv / MiB}
    return {
        "batch": args.memory_batch,
        "prompt": args.memory_prompt_tokens,
        "new_tokens": args.memory_new_tokens,
        "hidden": hidden,
        "layers": layers,
        "how": f"peak tensor bytes above those held before the call, {how}",
        "extra_peak_mib": {m: b / MiB for m, b in peaks.items()},
        "kv_cache_mib_analytic": caches,
        # The rest of each peak: the prefill's transient activations (plain, CAA), or little
        # beyond the three caches (DAC peaks after the prefill, copying its cache twice).
        "beyond_caches_mib": {m: b / MiB - caches[m] for m, b in peaks.items()},
        # A page at least: a tiny (--quick) probe cannot divide by nothing.
        "dac_over_caa": max(peaks["DAC"], PAGE) / max(peaks["CAA"], PAGE),
    }


# -- the figure ------------------------------------------------------------------------------


def draw(
    sweeps: dict[str, Sweep],
    fitted: dict[str, dict[str, dict]],
    memory: dict[str, Any],
    subtitle: str,
    path: Path,
) -> None:
    """Three panels (questions, width, tokens), one line per method; fitted lines dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    fig = Figure(figsize=(17, 6.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (name, sweep) in zip(axes, sweeps.items(), strict=True):
        x = sweep.values
        for m in METHODS:
            y, fit = sweep.medians(m), fitted[name][m]
            if name == "hidden":
                label = rf"{m}: time $\propto$ hidden$^{{{fit['exponent']:.2f}}}$"
            else:
                rows = sweep.fixed.get("questions")
                unit = "question" if rows is None else f"new token ({rows} rows)"
                label = f"{m}: {1000 * fit['slope_s']:.1f} ms per {unit}, R² {fit['r2']:.3f}"
                line = [fit["slope_s"] * v + fit["intercept_s"] for v in x]
                ax.plot(x, line, "--", color=COLORS[m], alpha=0.5, linewidth=1)
            # Plain wider and square-marked: CAA's line (the same cost) is drawn over it.
            wide = {"linewidth": 4, "marker": "s", "markersize": 9} if m == "plain" else {}
            ax.plot(x, y, **({"marker": "o"} | wide), color=COLORS[m], label=label)
        held = ", ".join(f"{AXES[k]} {v}" for k, v in sweep.fixed.items())
        ax.set_title(f"Val-pass time vs {AXES[name]}\n({held})")
        ax.set_xlabel(AXES[name] + (" (log scale)" if name == "hidden" else ""))
        ax.set_ylabel("val-pass time (s" + (", log scale)" if name == "hidden" else ")"))
        if name == "hidden":
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(x)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_yticks(_seconds_ticks([t for m in METHODS for t in sweep.medians(m)]))
        else:
            ax.set_xticks(x)  # the measured sizes, not fractions of them
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
    peak = memory["extra_peak_mib"]
    kv = memory["kv_cache_mib_analytic"]
    fig.suptitle(
        f"How a val pass's cost grows: {subtitle}\n"
        f"Peak memory at batch {memory['batch']} x {memory['prompt']}-token prompts, "
        f"{memory['new_tokens']} new tokens, hidden {memory['hidden']}, {memory['layers']} "
        "layers (tensor bytes above those held before): "
        + ", ".join(f"{m} +{_mib(peak[m])}" for m in METHODS)
        + f" (DAC / CAA {memory['dac_over_caa']:.2f}x)\n"
        f"of which KV caches (analytic): {_mib(kv['CAA'])} for plain and CAA (one cache), "
        f"{_mib(kv['DAC'])} for DAC (three)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)


def _seconds_ticks(times: list[float]) -> list[float]:
    """1-2-5 ticks spanning `times` (a log axis under a decade labels none by itself)."""
    lo, hi = min(times), max(times)
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, 3) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.2 <= t <= hi * 1.2]
    return inside or [lo, hi]


def _mib(x: float) -> str:
    return f"{x:.0f} MiB" if abs(x) >= 10 else f"{x:.2f} MiB"


def figure_path(out: Path | None, part: str = "growth") -> Path:
    """``<stem>.<part>.png`` beside ``--out``; without one, a fresh temporary file."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out.with_suffix(f".{part}.png")
    fd, name = tempfile.mkstemp(prefix=f"bench-{part}-", suffix=".png")
    os.close(fd)
    return Path(name)


# -- the part --------------------------------------------------------------------------------


def bench_growth(
    args: argparse.Namespace,
    device: torch.device,
    bench: RandomBench,
    progress: Callable[[str], None],
) -> Result:
    """Part growth: the three sweeps, their fits, peak memory, and the figure."""
    sweeps = run_sweeps(args, device, bench, progress)
    progress("growth: peak memory, plain / CAA / DAC")
    shape = {"hidden": args.growth_at_hidden, "layers": args.growth_layers}
    model = random_llama(argparse.Namespace(**{**vars(args), **shape}), device)
    memory = measure_memory(args, model)
    params = n_params(model)
    del model
    fitted = fits(sweeps)
    subtitle = (
        f"random Llama ({args.growth_layers} layers, vocab {args.vocab}; "
        f"{params / 1e6:.1f}M params at hidden {args.growth_at_hidden}), "
        f"val batch {args.growth_batch}, {device}, {args.threads} thread(s), "
        f"median of {args.growth_repeats}"
    )
    path = figure_path(args.out)
    draw(sweeps, fitted, memory, subtitle, path)
    if args.out is None:
        print(f"growth figure: {path}", flush=True)

    ratio = memory["dac_over_caa"]
    # Questions must give a straight line. Tokens may bend upwards: attention over a growing
    # cache is O(T^2) by nature, which `findings` says; their line must still fit (R^2).
    linear = all(straight(fitted["questions"][m]) for m in METHODS) and all(
        fitted["tokens"][m]["r2"] >= LINEAR_R2 for m in METHODS
    )
    per_q = "/".join(f"{1000 * fitted['questions'][m]['slope_s']:.0f}" for m in METHODS)
    rows = sweeps["tokens"].fixed["questions"]
    per_t = "/".join(f"{1000 * fitted['tokens'][m]['slope_s'] / rows:.2f}" for m in METHODS)
    r2 = min(fitted[s][m]["r2"] for s in ("questions", "tokens") for m in METHODS)
    k = "/".join(f"{fitted['hidden'][m]['exponent']:.1f}" for m in METHODS)
    peak = memory["extra_peak_mib"]
    return Result(
        "growth",
        "Cost growth: val pass vs questions, width, tokens; peak memory",
        ratio,
        f"DAC / CAA extra peak memory (batch {args.memory_batch}, "
        f"{args.memory_prompt_tokens}-token prompts)",
        f"<= 3x memory; linear in questions, R^2 >= {LINEAR_R2} in tokens (bends explained)",
        ratio <= 3.0 and linear,
        f"peak +{_mib(peak['DAC'])} vs +{_mib(peak['CAA'])} (DAC vs CAA, tensor bytes); "
        f"{per_q} ms per question, {per_t} ms per row-token (plain/CAA/DAC), R^2 >= {r2:.3f}; "
        f"width exponent {k}; figure {path.name}",
        {
            f"{name} {v}: {m}": sweep.times_s[m][i]
            for name, sweep in sweeps.items()
            for i, v in enumerate(sweep.values)
            for m in METHODS
        },
        {
            "model": subtitle,
            "val_pass": "steered_generate over the questions in batches (row refill for plain "
            "and CAA, DAC's three caches), fixed length (the EOS id is out of vocabulary)",
            "batch": args.growth_batch,
            "repeats": args.growth_repeats,
            "alpha": ALPHA,
            "sweeps": {name: s.as_json() for name, s in sweeps.items()},
            "fits": fitted,
            "linear_in_questions_line_in_tokens": linear,
            "not_linear": findings(sweeps, fitted, args.growth_batch),
            "memory": memory,
            "figure": str(path),
        },
    )

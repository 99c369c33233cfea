"""What every benchmark part shares: interleaved timing, `Result` and its markdown row, the
machine's description, forward counting, and the context managers the parts run in.

steerlight is imported inside functions only, so ``python scripts/bench --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: scripts/bench/common.py -> the repository root."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- timing ------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rounds(
    contenders: dict[str, Callable[[], Any]],
    repeats: dict[str, int],
    device: torch.device,
    warmup: dict[str, Callable[[], Any]] | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall times (s) and last outputs of each contender, repeats interleaved round by round.

    Every contender runs once untimed first (or its `warmup` callable), so one-off costs
    (kernel selection, lazy imports, allocator growth) land in no timed run.
    """
    warmup = warmup or {}
    for name, fn in contenders.items():
        warmup.get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, Any] = {}
    for r in range(max(repeats.values())):
        for name, fn in contenders.items():
            if r < repeats[name]:
                _sync(device)
                start = time.perf_counter()
                outputs[name] = fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return times, outputs


def median(xs: Sequence[float]) -> float:
    """The median as a plain float (JSON-ready)."""
    return float(statistics.median(xs))


class ForwardCounter:
    """Counts the model's forward calls inside a ``with`` block (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.count = model, 0

    def __enter__(self) -> ForwardCounter:
        self.count = 0
        self._handle = self.model.register_forward_pre_hook(self._tick)
        return self

    def _tick(self, *_: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def n_params(model: nn.Module) -> int:
    """Parameter count."""
    return sum(p.numel() for p in model.parameters())


# -- results and their report ------------------------------------------------------------------


@dataclass
class Result:
    """One benchmark: a ratio, its target and the measurements behind it."""

    name: str
    title: str
    ratio: float
    ratio_of: str
    target: str
    met: bool
    measured: str
    """One line for the markdown table: what the two sides took."""
    times_s: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The report entry under ``benchmarks.<name>``."""
        return {
            "title": self.title,
            "ratio": self.ratio,
            "ratio_of": self.ratio_of,
            "target": self.target,
            "target_met": self.met,
            "measured": self.measured,
            "median_s": {k: median(v) for k, v in self.times_s.items() if v},
            "times_s": self.times_s,
            "details": self.details,
        }


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    """The machine line and one table row per benchmark (bench.md, and stdout)."""
    lines = [
        f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} thread(s), "
        f"{meta['device']}, {meta['dtype']}. Command: `{meta['command']}`",
        "",
        "| benchmark | ratio | target | met | measured |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.title} | {r.ratio:.2f}x | {r.target} | {'yes' if r.met else 'NO'} | "
            f"{r.measured} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """Cores, CPU model and OS, e.g. ``2-core Intel(R) Xeon(R) ..., Linux``."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()}-core {cpu}, {platform.system()}"


# -- context managers --------------------------------------------------------------------------


@contextlib.contextmanager
def add_after_layer(layer: nn.Module, delta: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, decoder block `layer` returns ``hidden + delta(hidden)``.

    The naive baselines' own steering: they must not use steerlight's `steer`, the very thing
    they are timed against. It wraps the module's forward for the block instead of registering
    a forward hook, since hooks on decoder layers belong to steerlight alone (`steer` writes,
    `read_layers` reads); the arithmetic is the plain hook's, ``hidden + delta``.
    """
    own = vars(layer).get("forward")  # an instance attribute set by someone else, if any
    forward = layer.forward

    def steered(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + delta(out[0]), *out[1:])
        return out + delta(out)

    layer.forward = steered
    try:
        yield
    finally:
        if own is None:
            del layer.forward  # the class's forward again
        else:
            layer.forward = own


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-run banners (GPU available, model summary) add nothing to a benchmark."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    """Run the block in `folder` (contextlib.chdir needs Python 3.11)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)

"""`data.batch_size: auto`: the number of rows to decode at once, measured on this machine.

Decoding reads every weight once per step whatever the row count, so more rows per step give
more tokens per second until the machine runs out of compute (a CPU: the gain flattens) or
memory (a GPU: out of memory). `find_batch_size` doubles the rows from `START` and times a
few decode steps at each size, on a cache as long as the pass's longest prompt plus its new
tokens (the most memory a row takes; `CPU_LENGTH` on a CPU), and keeps the smallest size
within `FLAT` of the best rate seen: smaller batches let row refill replace finished rows
sooner. It stops at the first size that runs out of memory or gains less than `FLAT` over
the one before.

The answer is kept per model (weights fingerprint), device, dtype, thread count and length
bucket (a power of two) in ``$STEERLIGHT_HOME/batch_sizes.json`` and logged, so a search
measures it once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from steerlight.io import steerlight_home, write_json
from steerlight.model.generation import ChunkForward

log = logging.getLogger(__name__)

START = 8
"""The smallest batch tried (the CPU default of earlier versions)."""
FLAT = 0.10
"""A batch twice as large must decode this much faster (tokens/s) to be worth it."""
STEPS = 4
"""Timed decode steps per size (after one untimed step)."""
CPU_LENGTH = 32
"""Cache length of the CPU measurement: memory is no limit there, and a long prefill per size
would cost minutes (the attention over a longer cache adds little to a step)."""


def cache_key(fingerprint: str, device: torch.device, dtype: torch.dtype, length: int) -> str:
    """Where `find_batch_size`'s answer is kept: model, device, dtype, threads, length bucket."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bucket = 1 << max(0, length - 1).bit_length()
    return f"{fingerprint}|{name}|{dtype}|threads {torch.get_num_threads()}|len {bucket}"


def find_batch_size(
    model: nn.Module,
    length: int,
    fingerprint: str,
    limit: int = 1024,
    timer: Callable[[], float] = time.perf_counter,
) -> int:
    """The rows to decode at once for sequences of up to `length` tokens (at most `limit`):
    kept from an earlier call with the same `cache_key`, else measured and kept."""
    param = next(model.parameters())
    key = cache_key(fingerprint, param.device, param.dtype, length)
    path = steerlight_home() / "batch_sizes.json"
    known = _read(path)
    if key in known:
        log.info("data.batch_size auto: %d (measured before on this machine)", known[key])
        return min(int(known[key]), limit)
    rates: dict[int, float] = {}
    size, capped = min(START, limit), False
    while True:
        rate = _decode_rate(model, size, length, timer)
        if rate is None:  # out of memory
            break
        if rates and rate < list(rates.values())[-1] * (1 + FLAT):
            rates[size] = rate
            break
        rates[size] = rate
        if size >= limit:
            capped = True  # (the machine might take more: not kept for other passes)
            break
        size = min(size * 2, limit)
    if not rates:
        raise MemoryError(f"not even {min(START, limit)} rows of {length} tokens fit in memory")
    best = max(rates.values())
    chosen = min(s for s, r in rates.items() if r >= best / (1 + FLAT))
    shown = ", ".join(f"{s}: {r:.0f}" for s, r in rates.items())
    log.info("data.batch_size auto: %d (decoded tokens/s by rows: %s)", chosen, shown)
    if not capped:
        write_json(path, {**_read(path), key: chosen})
    return chosen


def _read(path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@torch.no_grad()
def _decode_rate(
    model: nn.Module, rows: int, length: int, timer: Callable[[], float]
) -> float | None:
    """Decoded tokens/s of `rows` rows whose cache holds `length` - `STEPS` - 1 columns, or
    None when they do not fit in memory."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    length = length if device.type == "cuda" else min(length, CPU_LENGTH)
    width = max(1, length - STEPS - 1)
    ids = torch.randint(3, vocab, (rows, width + STEPS + 1), device=device)
    mask = torch.ones_like(ids)
    forward = ChunkForward(model, padded=False)
    try:
        _, cache = forward(ids[:, :width], mask[:, :width], None, width)
        _, cache = forward(ids[:, : width + 1], mask[:, : width + 1], cache, 1)
        _sync(device)
        start = timer()
        for step in range(width + 2, width + STEPS + 2):
            _, cache = forward(ids[:, :step], mask[:, :step], cache, 1)
        _sync(device)
        return rows * STEPS / max(timer() - start, 1e-9)
    except torch.OutOfMemoryError:
        return None
    finally:
        del ids, mask
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

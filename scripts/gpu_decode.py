"""Decode cost on a GPU against its memory roofline: plain, steered and DAC, eager and compiled.

    python scripts/gpu_decode.py --out decode.json                  # the 1.1B shape, batch 64
    python scripts/gpu_decode.py --device cpu --hidden 128 --layers 2 --batch 4 --out /tmp/d.json

A decode step has to read every weight once, so ``weight bytes / copy bandwidth`` (a
device-to-device copy timed here, counting bytes read and written, as a card's bandwidth is
quoted) is the floor of one step. The model is a random-weight Llama of `configs/gsm8k.yaml`'s
shape; its end-of-sequence id is one it cannot emit, so every contender decodes exactly
``--new-tokens`` steps of the same batch. Contenders, timed in interleaved rounds:

- ``plain eager``: ``model.generate`` on Transformers' dynamic cache;
- ``steerlight CAA eager``: `steer` + steerlight's `generate` (the search's path);
- ``steerlight DAC eager``: `dac_generate` (three KV caches);
- ``plain compiled``: ``model.generate`` on a static cache, compiled by Transformers (CUDA
  graphs on a GPU);
- ``tensor hook compiled``: the same with a hook that adds ``alpha * v`` from tensors only (no
  Python branch per step), the form a compiled steered decode needs: its overhead over
  ``plain compiled`` is what steering costs inside the graph.

A contender that fails is reported with its error and the others go on. Each result is
written to ``--out`` as soon as it is measured, so a killed run keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--dtype", default="bfloat16", help="weights dtype (default: bfloat16)")
    p.add_argument("--hidden", type=int, default=2048, help="hidden size (1.1B shape: 2048)")
    p.add_argument("--layers", type=int, default=22, help="decoder layers (1.1B shape: 22)")
    p.add_argument("--heads", type=int, default=32, help="attention heads")
    p.add_argument("--kv-heads", type=int, default=4, help="key/value heads")
    p.add_argument("--intermediate", type=int, default=5632, help="MLP width")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    p.add_argument("--batch", type=int, default=64, help="rows decoded at once")
    p.add_argument("--prompt", type=int, default=256, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=int, default=128, help="decode steps per generation")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per contender")
    p.add_argument("--skip-compiled", action="store_true", help="eager contenders only")
    p.add_argument("--out", type=Path, required=True, help="JSON results (rewritten per result)")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes per second a device-to-device copy moves, counting bytes read and written."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def random_llama(args: argparse.Namespace, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.prompt + args.new_tokens + 8,
        bos_token_id=1,
        eos_token_id=args.vocab,  # outside the vocabulary: never emitted, every row runs full
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, args.dtype))
    return model.eval().requires_grad_(False)


class NoEOS:
    """What steerlight's decoders ask of a tokenizer, with an end-of-sequence id never emitted."""

    pad_token_id = 0

    def __init__(self, eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id

    def batch_decode(self, ids, **_):
        return ["" for _ in ids]

    def decode(self, ids, **_):
        return ""


def contenders(args, model, ids, mask, device) -> dict:
    from transformers import GenerationConfig

    from steerlight.model.generation import GenerationSettings, generate
    from steerlight.steering.dac import dac_generate
    from steerlight.steering.hooks import steer

    n, layer = args.new_tokens, args.layers // 2
    vector = torch.randn(args.hidden, generator=torch.Generator().manual_seed(1)).to(device)
    settings = GenerationSettings(max_new_tokens=n)
    tok = NoEOS(args.vocab)

    def hf(cache: str | None):
        config = GenerationConfig(
            max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=args.vocab
        )
        extra = {"cache_implementation": cache} if cache else {}
        return lambda: model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, **extra
        )[:, ids.shape[1] :]

    def caa():
        with steer(model, layer, vector, 2.0, prompt_len=ids.shape[1]):
            return generate(model, tok, ids, mask, settings).tokens

    def dac():
        out = dac_generate(model, tok, ids, mask, layer, vector, settings, top_p=0.9, alpha_max=2.0)
        return out.tokens

    alpha = torch.tensor(2.0, device=device, dtype=model.dtype)
    v = vector.to(model.dtype)

    def tensor_hook(_module, _inputs, output):  # every column: no position logic, no branch
        if isinstance(output, tuple):
            return (output[0] + alpha * v,) + tuple(output[1:])
        return output + alpha * v

    def hooked_compiled():
        from steerlight.model.layers import decoder_layers

        handle = decoder_layers(model)[layer].register_forward_hook(tensor_hook)
        try:
            return hf("static")()
        finally:
            handle.remove()

    out = {
        "plain eager": hf(None),
        "steerlight CAA eager": caa,
        "steerlight DAC eager": dac,
    }
    if not args.skip_compiled:
        out["plain compiled"] = hf("static")
        out["tensor hook compiled"] = hooked_compiled
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "contenders": {}}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(json.dumps(results["contenders"], indent=1)[-1500:], flush=True)

    if device.type == "cuda":
        results["device"] = torch.cuda.get_device_name(device)
    bandwidth = copy_bandwidth(device, 2.0 if device.type == "cuda" else 0.05)
    model = random_llama(args, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    roofline_ms = 1000 * weight_bytes / bandwidth
    results.update(
        copy_bandwidth_gb_s=bandwidth / 1e9,
        weight_bytes=weight_bytes,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        roofline_ms_per_step=roofline_ms,
    )
    save()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt), generator=g).to(device)
    mask = torch.ones_like(ids)
    pad = max(1, args.prompt // 16)  # half the rows left-padded
    ids[: args.batch // 2, :pad], mask[: args.batch // 2, :pad] = 0, 0
    runs = contenders(args, model, ids, mask, device)
    tokens: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up (and compilation), each alone
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                tokens[name] = fn().cpu()
            sync(device)
            results["contenders"][name] = {"warmup_s": time.perf_counter() - t0}
        except Exception as err:  # reported, never hidden: the other contenders go on
            results["contenders"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        save()
    live = [name for name in runs if name in tokens]
    for _ in range(args.repeats):  # interleaved rounds: load changes hit every contender alike
        for name in live:
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                runs[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    base = tokens.get("plain eager")
    for name in live:
        ms = 1000 * statistics.median(times[name]) / args.new_tokens
        results["contenders"][name].update(
            ms_per_step=ms,
            tokens_per_s=args.batch * args.new_tokens / statistics.median(times[name]),
            roofline_fraction=roofline_ms / ms,
            times_s=times[name],
            same_tokens_as_plain_eager=None if base is None else torch.equal(tokens[name], base),
        )
    ms = {name: results["contenders"][name]["ms_per_step"] for name in live}
    ratio = {
        "caa_over_plain_eager": ("steerlight CAA eager", "plain eager"),
        "dac_over_caa_eager": ("steerlight DAC eager", "steerlight CAA eager"),
        "compiled_speedup": ("plain eager", "plain compiled"),
        "hook_over_plain_compiled": ("tensor hook compiled", "plain compiled"),
    }
    results["ratios"] = {k: ms[a] / ms[b] for k, (a, b) in ratio.items() if a in ms and b in ms}
    save()
    print(json.dumps(results["ratios"], indent=1))


if __name__ == "__main__":
    main()

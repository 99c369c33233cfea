"""The compiled decode (`model.generation.compile`) against the eager row-refill path on a real
model: chat prompts of GSM8K test questions, steered as one CAA trial would be, two strengths
(two trials: the second must compile nothing), same tokens required.

    python scripts/compiled_decode.py --questions 16 --new-tokens 64 --threads 2
    python scripts/compiled_decode.py --device cuda --questions 64 --new-tokens 256

Prints one line per pass: seconds, generated tokens, whether the tokens equal the eager path's,
and the graphs compiled so far (the first compiled pass includes compile time).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or path")
    p.add_argument("--gsm8k-dir", default="../shared/data/gsm8k", help="GSM8K parquet folder")
    p.add_argument("--questions", type=int, default=16, help="test questions (one batch)")
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per answer")
    p.add_argument("--layer", type=int, default=15, help="steered decoder layer")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="write the lines as JSON here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from torch._dynamo.utils import counters

    from steerlight.data.prompts import get_preset
    from steerlight.data.sources import load_rows
    from steerlight.model.generation import GenerationSettings
    from steerlight.model.loading import load_model, load_tokenizer
    from steerlight.model.refill import refill_generate
    from steerlight.steering.hooks import steer

    model = load_model(args.model).to(args.device)
    tok = load_tokenizer(args.model)
    rows = load_rows(args.gsm8k_dir)["test"][: args.questions]
    preset = get_preset("chat")
    prompts = [preset.render(r["question"], (), tok) for r in rows]
    enc = tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.to(args.device), enc.attention_mask.to(args.device)
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    eager = GenerationSettings(max_new_tokens=args.new_tokens)
    compiled = replace(eager, compile=True)
    want, lines = {}, []
    for name, settings, alpha in [
        ("eager", eager, 0.5), ("compiled", compiled, 0.5),
        ("eager", eager, 0.7), ("compiled", compiled, 0.7), ("compiled", compiled, 0.5),
    ]:  # fmt: skip
        with steer(model, args.layer, v, alpha, prompt_len=ids.shape[1]) as s:
            start = time.perf_counter()
            gen = refill_generate(model, tok, ids, mask, settings, preset.stop, None, s.columns)
            seconds = time.perf_counter() - start
        want.setdefault(alpha, gen.tokens)
        line = {
            "path": name,
            "alpha": alpha,
            "seconds": round(seconds, 2),
            "tokens": int((gen.tokens != tok.pad_token_id).sum()),
            "same_tokens_as_eager": bool(torch.equal(gen.tokens, want[alpha])),
            "graphs_compiled": int(counters["stats"]["unique_graphs"]),
        }
        lines.append(line)
        print(json.dumps(line), flush=True)
    if args.out:
        args.out.write_text(json.dumps(lines, indent=1) + "\n")


if __name__ == "__main__":
    main()

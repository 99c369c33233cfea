"""A real-size rehearsal: `configs/gsm8k.yaml` end to end on a random model of the real shape.

    python scripts/rehearse.py --out rehearsal.json                      # a CPU: a few minutes
    python scripts/rehearse.py --device cuda --val 64 --max-new-tokens 256 --out gpu.json

The model has the architecture of the config's default (`realtreetune/rho-1b-sft-GSM8K`, a 1.1B
Llama: 22 layers, hidden 2048, 32 heads, 4 KV heads, intermediate 5632, vocabulary 32000) with
random weights, saved locally and loaded through `from_pretrained` like the real one. GSM8K comes
from the local copy (5-shot prompts). The run is the README's: fit, a 2-trial search, test. The
script reports each step's time and peak memory (process RSS on a CPU, allocated GPU memory on
CUDA); a random model answers nothing right, so the accuracies are not the point.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(
    num_hidden_layers=22,
    hidden_size=2048,
    num_attention_heads=32,
    num_key_value_heads=4,
    intermediate_size=5632,
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="rehearsal.json", help="Where the JSON report goes.")
    p.add_argument("--workdir", default="rehearsal", help="Model, logs and caches (reused).")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="Where to run.")
    p.add_argument("--dtype", default="bfloat16", help="Weights dtype (the config's: bfloat16).")
    p.add_argument("--gsm8k-dir", default=str(ROOT.parent / "shared" / "data" / "gsm8k"),
                   help="A folder with GSM8K's train.jsonl and test.jsonl.")  # fmt: skip
    p.add_argument("--train", type=int, default=8, help="Train questions for the vectors.")
    p.add_argument("--val", type=int, default=4, help="Val questions per trial.")
    p.add_argument("--test", type=int, default=4, help="Test questions for the verdict.")
    p.add_argument("--max-new-tokens", type=int, default=8, help="Generation limit.")
    p.add_argument("--batch-size", type=int, default=4, help="Questions per batch.")
    p.add_argument("--shots", type=int, default=5, help="Exemplars in each prompt.")
    return p.parse_args(argv)


def build_model(folder: Path, dtype: str, gsm8k_dir: Path) -> None:
    """The random 1.1B Llama and a 32k BPE tokenizer trained on GSM8K's train questions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlight.tiny.tokenizer import build_tokenizer

    if (folder / "config.json").is_file():
        return
    rows = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    tokenizer = build_tokenizer((r["question"] + "\n" + r["answer"] for r in rows), 32000)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main(argv: list[str] | None = None) -> dict:
    from steerlight.console import show_logs

    args = parse_args(argv)
    show_logs()  # steerlight's progress lines, as the commands print them
    work = Path(args.workdir).resolve()
    model_dir = work / "model"
    steps: dict[str, dict] = {}

    def step(name: str, fn) -> object:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        steps[name] = {"seconds": round(time.perf_counter() - start, 1),
                       "peak_memory_gb": round(peak_memory_gb(args.device), 2)}  # fmt: skip
        print(f"rehearsal: {name}: {steps[name]}", flush=True)
        return out

    step("build model", lambda: build_model(model_dir, args.dtype, Path(args.gsm8k_dir)))
    config = yaml.safe_load((ROOT / "configs" / "gsm8k.yaml").read_text())
    config["trainer"].update(accelerator="gpu" if args.device == "cuda" else "cpu")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(work / "lightning_logs")
    config["model"].update(model_name_or_path=str(model_dir), dtype=args.dtype,
                           cache_dir=str(work / "cache"))  # fmt: skip
    config["model"]["generation"]["max_new_tokens"] = args.max_new_tokens
    config["data"].update(
        source=args.gsm8k_dir,
        n_shots=args.shots,
        limit_train=args.train,
        limit_val=args.val,
        limit_test=args.test,
        batch_size=args.batch_size,
    )
    path = work / "gsm8k_rehearsal.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    import steerlight.search
    from steerlight.cli import cli_main

    step("fit", lambda: cli_main(["fit", "--config", str(path)]))
    root = work / "lightning_logs"
    step("search (2 trials)", lambda: steerlight.search.search(
        path, n_trials=2, rounds=1, study_name="rehearsal", root=str(root)))  # fmt: skip
    results = step("test", lambda: steerlight.search.verdict(study_name="rehearsal", root=root))
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": SHAPE,
        "parameters": _count(model_dir),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "steps": steps,
        "test_questions": results["questions"],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)
    return report


def _count(folder: Path) -> int:
    """Parameters of the saved model, from its config alone (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main(sys.argv[1:])

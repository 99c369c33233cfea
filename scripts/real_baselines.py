"""The unsteered baseline of a model on real GSM8K val questions, per prompt preset.

    python scripts/real_baselines.py --data ../shared/data/gsm8k --n 200 --device cuda \\
        --dtype bfloat16 --batch-size 64 --out docs/real_baselines

Each preset runs steerlight's own `validate` (a Lightning Trainer on `SteeredLM` with
``method: none`` and `GSM8KDataModule`), so the numbers are steerlight's: strict and flexible
exact match, generated tokens per answer, the fraction of answers that ran to the token cap and
seconds per question (the validate pass; the model is loaded once, before the first preset).
Writes ``baselines.json`` and ``baselines.md`` (a table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

PRESETS = ("gsm8k", "gsm8k_cot", "chat", "gsm8k_cot_zeroshot")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Model name or path.")
    parser.add_argument("--data", default="openai/gsm8k", help="GSM8K: Hub id or local folder.")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="Prompt presets.")
    parser.add_argument("--n", type=int, default=200, help="Val questions per preset.")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--batch-size",
        type=lambda v: v if v == "auto" else int(v),
        default="auto",
        help="Rows decoded at once: a number, or auto (measured on this machine).",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--out", default="real_baselines", help="Folder for the JSON and table.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from steerlight.cli import quiet_expected_warnings
    from steerlight.model.loading import reuse_loaded_models

    quiet_expected_warnings()
    rows = []
    with reuse_loaded_models():  # the model is loaded once for every preset
        for preset in args.presets:
            rows.append(measure(args, preset))
            logging.info("%s: %s", preset, json.dumps(rows[-1]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/real_baselines.py " + shlex.join(argv or sys.argv[1:])
    result = {"command": command, "settings": vars(args), "presets": rows}
    (out / "baselines.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "baselines.md").write_text(table(rows, command))
    print(table(rows, command))
    return result


def measure(args: argparse.Namespace, preset: str) -> dict:
    """One preset's unsteered validate pass on `args.n` val questions."""
    import lightning.pytorch as pl

    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.module import SteeredLM
    from steerlight.progress import PassProgress

    module = SteeredLM(
        model_name_or_path=args.model,
        dtype=args.dtype,
        preset=preset,
        method="none",
        generation={"max_new_tokens": args.max_new_tokens},
    )
    data = GSM8KDataModule(
        source=args.data,
        tokenizer=args.model,
        preset=preset,
        limit_val=args.n,
        limit_train=1,
        limit_test=1,
        batch_size=args.batch_size,
    )
    module.configure_model()  # (loaded once: `reuse_loaded_models`) before the clock starts
    data.setup("validate")
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PassProgress(prefix=f"{preset} ")],
    )
    start = time.perf_counter()
    trainer.validate(module, data, verbose=False)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    questions = int(metrics["val/questions"])
    prompts = [len(ex["input_ids"]) for ex in data.splits["val"]]
    return {
        "preset": preset,
        "shots": len(data.exemplars),
        "questions": questions,
        "strict": metrics["val/acc_strict"],
        "flexible": metrics["val/acc_flexible"],
        "tokens_per_answer": metrics["val/tokens_per_answer"],
        "at_token_cap": metrics["val/at_token_cap"],
        "prompt_tokens": sum(prompts) / len(prompts),
        "seconds_per_question": seconds / questions,
    }


def table(rows: list[dict], command: str) -> str:
    """The results as a markdown table, with the command that reproduces them."""
    lines = [
        "| preset | shots | questions | strict | flexible | tokens/answer | at token cap "
        "| prompt tokens | s/question |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['shots']} | {r['questions']} | {r['strict']:.3f} "
            f"| {r['flexible']:.3f} | {r['tokens_per_answer']:.1f} | {r['at_token_cap']:.2f} "
            f"| {r['prompt_tokens']:.0f} | {r['seconds_per_question']:.2f} |"
        )
    return "\n".join(lines) + f"\n\n`{command}`\n"


if __name__ == "__main__":
    main()

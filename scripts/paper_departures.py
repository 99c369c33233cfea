"""How far steerlight's defaults are from the papers', measured on a model (default: `tiny`).

    python scripts/paper_departures.py [--model tiny] [--pairs 256]

Prints, per decoder layer: the cosine between the CAA vector read as a mean over solution
tokens (`read_position: mean`, the default) and read at the last token (`last`, the CAA
paper's); and the norm of mean-pooled activations (what `normalization: mean_norm` scales by
with `read_position: mean`) over the mean per-token residual norm, both over solution tokens.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="Model id or folder (default: tiny).")
    parser.add_argument("--pairs", type=int, default=256, help="Train questions to read.")
    args = parser.parse_args()

    from steerlight.data.datamodule import GSM8KDataModule
    from steerlight.data.prompts import get_preset
    from steerlight.model.loading import load_model, load_tokenizer
    from steerlight.steering.activations import read_layers, read_mask_for
    from steerlight.steering.caa import mean_difference
    from steerlight.steering.fit import corrupted_pairs, solution_activations
    from steerlight.tiny import resolve_model_name

    path = resolve_model_name(args.model)
    model, tok = load_model(path), load_tokenizer(path)
    dm = GSM8KDataModule(source="synthetic", tokenizer=tok, n_shots=0, limit_train=args.pairs)
    dm.setup("fit")
    preset = get_preset("gsm8k")
    reads: dict[str, list[torch.Tensor]] = {"mean": [], "last": []}
    labels, token_norms = [], []
    for batch in dm.train_dataloader():
        texts, good, lens = corrupted_pairs(batch, preset.continuation, seed=0)
        labels += good
        for how in reads:
            reads[how].append(solution_activations(model, tok, texts, lens, how))
        enc = tok(texts, padding=True, return_tensors="pt")
        layers = range(model.config.num_hidden_layers)
        pad = enc["attention_mask"]
        start = pad.shape[1] - pad.sum(1) + torch.tensor(lens)  # the solution span, as CAA reads
        mask = read_mask_for(pad, start.clamp(max=pad.shape[1] - 1), "mean")

        def token_norm(hidden: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
            return hidden.norm(dim=-1)[mask].mean()

        with read_layers(model, layers, token_norm) as norms, torch.no_grad():
            model(**enc)
        token_norms.append(torch.stack([norms[i] for i in layers]))
    y = torch.tensor(labels)
    acts = {how: torch.cat(parts) for how, parts in reads.items()}
    mean_v, last_v = mean_difference(acts["mean"], y), mean_difference(acts["last"], y)
    cosine = torch.nn.functional.cosine_similarity(mean_v, last_v, dim=-1)
    pooled = acts["mean"].norm(dim=-1).mean(0)
    per_token = torch.stack(token_norms).mean(0)
    print("layer  cos(mean, last)  |mean-pooled| / per-token norm")
    for i in range(len(cosine)):
        print(f"{i:5d}  {cosine[i]:15.3f}  {pooled[i] / per_token[i]:.3f}")


if __name__ == "__main__":
    main()

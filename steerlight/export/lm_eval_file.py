"""The steer file of lm-evaluation-harness's `steered` model (`lm_eval/models/hf_steered.py`).

A ``.pt``/``.pth`` file that ``SteeredModel`` loads with `torch.load`: a dict from hookpoint to
its steering, where a hookpoint is a module name inside ``model.base_model`` (``layers.2`` for
a Llama: decoder layer 2 of ``LlamaModel``) and ``action: add`` adds
``steering_vector * steering_coefficient`` to that module's output at every position::

    {"layers.2": {"steering_vector": Tensor(hidden), "steering_coefficient": float,
                  "action": "add", "bias": None, "head_index": None}}

Every top-level key is read as a hookpoint, so the file holds nothing else.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from steerlight.errors import SteerlightError
from steerlight.export.state import ExportState

SUFFIXES = (".pt", ".pth")
"""The steer-file names `SteeredModel` accepts (a ``.csv`` is its sparse-feature format)."""


def check_out(out: Path) -> None:
    """lm-eval picks the loader by the file name: refuse one it would not read."""
    if out.suffix not in SUFFIXES:
        raise SteerlightError(
            f"--out {out}: lm-eval's steered model reads only .pt or .pth steer files; "
            f"name it e.g. {out.with_suffix('.pt').name}"
        )


def write(state: ExportState, path: Path) -> None:
    """Write the steer file (the unit direction and the absolute coefficient) to `path`."""
    steer = {
        state.structure.hookpoint(state.layer): {
            "steering_vector": state.direction.clone(),
            "steering_coefficient": state.coefficient,
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    }
    torch.save(steer, path)


def usage(state: ExportState, out: Path) -> str:
    """The `lm_eval` command that evaluates the steered model on GSM8K."""
    args = [f"pretrained={state.model_path}"]
    if state.revision:
        args.append(f"revision={state.revision}")
    args.append(f"dtype={state.dtype}")
    if state.trust_remote_code:
        args.append("trust_remote_code=True")
    args.append(f"steer_path={out.resolve()}")
    return f"lm_eval --model steered --model_args {shlex.quote(','.join(args))} --tasks gsm8k"

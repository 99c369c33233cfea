"""The embedded default model: a tiny Llama that steerlight trains on synthetic GSM8K and caches.

No model can be downloaded on an offline machine, so steerlight ships one (`cache.SHIPPED`,
2.4 MB, copied into the cache on first use) and `tiny_model_path()` can build it again: a
`LlamaForCausalLM` of about a million parameters (RMSNorm, RoPE, SwiGLU, a plain residual
stream, so steering hooks apply exactly as on a real model) and a byte-level BPE tokenizer that
splits digits, both trained on the *train* split of the `synthetic` source (minus the default
val hold-out, so neither val nor test questions are ever seen) with a small Lightning loop.
It is saved with ``save_pretrained`` under ``$STEERLIGHT_HOME/tiny/<recipe key>/`` (default
``~/.cache/steerlight``) and loads with the ``Auto*`` classes; every field of `TinyRecipe` is
part of the key, so changing the recipe builds a new folder. `resolve_model_name` maps the
model name ``tiny`` to that folder.

It is a zero-shot solver: with exemplars in the prompt it confuses their numbers with the
question's (the shipped build: exact match 46.8% zero-shot on the 500 default test questions), so
use it with ``n_shots: 0`` as ``configs/debug.yaml`` does. Generation ends with ``</s>`` (or the
preset's stop string ``Question:``).

What makes it learn in minutes (measured by ``scripts/tiny_quality.py``): small numbers in the
synthetic problems (most reading errors were copying a two-digit number wrong), a loss on the
questions too (the model learns to read them), drills of the solutions' calculator notes, and
many small heads.

Modules: `recipe` (settings and key), `cache` (build once, install atomically), `data` (packed
training rows), `train` (the Lightning loop; imports torch), `evaluation`, `tokenizer`.
``python -m steerlight.tiny`` builds it explicitly and can measure its accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerlight.tiny.cache import resolve_model_name, tiny_model_path
from steerlight.tiny.evaluation import default_test_rows, eval_exemplars, evaluate
from steerlight.tiny.recipe import BUILD_FORMAT, TinyRecipe

if TYPE_CHECKING:
    from steerlight.tiny.train import build_tiny_model

__all__ = [
    "BUILD_FORMAT",
    "TinyRecipe",
    "build_tiny_model",
    "default_test_rows",
    "eval_exemplars",
    "evaluate",
    "resolve_model_name",
    "tiny_model_path",
]


def __getattr__(name: str) -> Any:
    # `build_tiny_model` lives with the Lightning loop, which imports torch and Lightning:
    # load it on first use so that `import steerlight.tiny` stays cheap.
    if name == "build_tiny_model":
        from steerlight.tiny.train import build_tiny_model

        return build_tiny_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

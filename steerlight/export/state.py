"""What an export carries: a checkpoint's applied steering as a unit direction and an absolute
coefficient at one decoder layer, and the base model's identity and module names.

The three targets (lm-evaluation-harness, steering-vectors, llama.cpp control vectors) all add
one fixed vector to the output of one decoder layer at every position. steerlight adds

    alpha * scale_vectors(vectors[layer], normalization, act_norm[layer])

so the export is ``direction * coefficient`` with ``direction`` the unit CAA direction and
``coefficient = alpha * s``, where ``s`` is what the normalization scales the unit vector to
(``act_norm[layer]`` for ``mean_norm``, 1 for ``unit``, the raw vector's norm for ``none``).
Where a target cannot express the checkpoint (DAC's per-token strength, positions other than
``all``), the difference is said in `ExportState.warnings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from steerlight.errors import SteerlightError
from steerlight.model.layers import decoder_layers
from steerlight.model.loading import check_model_path, model_source
from steerlight.steering import method as methods
from steerlight.steering.scaling import scale_vectors


@dataclass(frozen=True)
class ModelStructure:
    """The base model's architecture name and the module names the targets address it by."""

    model_type: str
    """`config.model_type` (``llama``); llama.cpp's `general.architecture` for most models."""
    num_layers: int
    hidden_size: int
    layers_name: str
    """The decoder-layer `ModuleList` as `model.named_modules()` names it (``model.layers``)."""
    base_model_name: str
    """The name of `model.base_model` inside the model (``model``; empty when it is the model)."""

    def layer_name(self, layer: int) -> str:
        """The full module name of decoder layer `layer` (``model.layers.2``)."""
        return f"{self.layers_name}.{layer}"

    def hookpoint(self, layer: int) -> str:
        """The name of decoder layer `layer` inside `model.base_model` (``layers.2``)."""
        name = self.layer_name(layer)
        return name[len(self.base_model_name) + 1 :] if self.base_model_name else name


@dataclass(frozen=True)
class ExportState:
    """A checkpoint's steering as every target sees it."""

    checkpoint: Path
    model_name_or_path: str
    """As the checkpoint records it (``tiny`` for the embedded model)."""
    model_path: str
    """What a loader is given: the Hub id, or the local folder (``tiny`` resolved)."""
    revision: str | None
    dtype: str
    trust_remote_code: bool
    weights_fingerprint: str
    structure: ModelStructure
    method: str
    layer: int
    """0-based index into the model's decoder layers; the vector is added to its output."""
    strength: float
    """steerlight's alpha (``dac.alpha_max`` for DAC), relative to the normalization."""
    normalization: str
    positions: str
    direction: Tensor
    """(hidden,) float32, unit norm."""
    coefficient: float
    """The norm of the added vector, signed: `strength` times the normalization's scale."""
    warnings: tuple[str, ...] = field(default=())

    @property
    def vector(self) -> Tensor:
        """What is added to the layer's output: ``direction * coefficient`` (float32)."""
        return self.direction * self.coefficient

    def provenance(self) -> dict[str, Any]:
        """Plain values recording where an exported file came from."""
        return {
            "checkpoint": str(self.checkpoint),
            "base_model": self.model_name_or_path,
            "revision": self.revision,
            "weights_fingerprint": self.weights_fingerprint,
            "method": self.method,
            "layer": self.layer,
            "strength": self.strength,
            "normalization": self.normalization,
            "positions": self.positions,
            "coefficient": self.coefficient,
        }


def read_state(checkpoint: Mapping[str, Any], path: Path, target: str) -> ExportState:
    """The steering of a checkpoint read by `steerlight.checkpoint.check_checkpoint`.

    `target` names the format in the warnings. Raises `SteerlightError` for a checkpoint that
    does not steer (method ``none`` or strength 0) or does not fit its base model.
    """
    hp = dict(checkpoint.get("hyper_parameters") or {})
    steering = checkpoint["steering"]
    base = checkpoint.get("base_model") or {}
    method = hp.get("method", "caa")
    steerer = methods.get(method)
    if steerer.strength is None:
        raise SteerlightError(
            f"checkpoint {path} does not steer (method: {method}): there is no vector to export; "
            "pass a checkpoint fitted with a steering method"
        )
    if not steerer.exports:
        exporting = ", ".join(m.name for m in methods.registry().values() if m.exports)
        raise SteerlightError(
            f"checkpoint {path}: {steerer.refusal()}, which {target} cannot hold; "
            f"export a checkpoint of {exporting}"
        )
    strength = steerer.strength_of(hp)
    if strength == 0:
        raise SteerlightError(
            f"checkpoint {path} does not steer ({steerer.strength}: 0): the exported vector "
            "would be zero; export a checkpoint that steers (e.g. the search's best trial)"
        )
    name = hp.get("model_name_or_path") or base.get("name_or_path")
    if not name:
        raise SteerlightError(f"checkpoint {path} does not name its base model")
    model_path = model_source(name)  # `tiny` or an alias resolved, a GGUF file converted
    revision = hp.get("revision")
    trust = bool(hp.get("trust_remote_code", False))
    structure = model_structure(model_path, revision, trust)

    layer = _layer(hp.get("layer", "auto"), steering, structure, path)
    try:
        raw, vector_note = steerer.export_vector(steering, layer, hp)
    except SteerlightError as err:
        raise SteerlightError(f"checkpoint {path}: {err}") from None
    if raw.shape[-1] != structure.hidden_size:
        raise SteerlightError(
            f"checkpoint {path} holds vectors of size {raw.shape[-1]}, but {name!r} has hidden "
            f"size {structure.hidden_size}: export it with the model it was fitted on"
        )
    if not bool(raw.norm() > 0):
        raise SteerlightError(f"checkpoint {path}: the vector at layer {layer} is zero")
    normalization = hp.get("normalization", "mean_norm")
    # the norm `scale_vectors` gives the unit direction: alpha is relative to it
    if normalization == "none":
        scale = float(raw.norm())
    elif normalization == "unit":
        scale = 1.0
    elif normalization == "mean_norm":
        scale = float(steering["act_norm"][layer])
    else:
        raise SteerlightError(f"checkpoint {path}: unknown normalization {normalization!r}")
    positions = hp.get("positions", "prompt_end+generated")
    notes = steerer.export_notes(target, strength) + _limits(target, positions) + vector_note
    return ExportState(
        checkpoint=path,
        model_name_or_path=name,
        model_path=model_path,
        revision=revision,
        dtype=hp.get("dtype", "float32"),
        trust_remote_code=trust,
        weights_fingerprint=str(base.get("weights_fingerprint", "")),
        structure=structure,
        method=method,
        layer=layer,
        strength=strength,
        normalization=normalization,
        positions=positions,
        direction=scale_vectors(raw, "unit"),
        coefficient=strength * scale,
        warnings=tuple(notes),
    )


def model_structure(path: str, revision: str | None, trust_remote_code: bool) -> ModelStructure:
    """The module names of a model, from its config alone (built on the meta device, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model_path(path)
    try:
        config = AutoConfig.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
        with torch.device("meta"):  # names and shapes only: nothing is allocated or downloaded
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        layers = decoder_layers(model)
    except (OSError, ValueError) as err:
        raise SteerlightError(f"cannot read the structure of model {path!r}: {err}") from None
    names = {id(module): name for name, module in model.named_modules()}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or model.get_input_embeddings().embedding_dim
    return ModelStructure(
        model_type=str(getattr(config, "model_type", "") or type(model).__name__),
        num_layers=len(layers),
        hidden_size=int(hidden),
        layers_name=names[id(layers)],
        base_model_name=names.get(id(model.base_model), ""),
    )


def _layer(layer: Any, steering: Mapping[str, Tensor], structure: ModelStructure, path) -> int:
    """The steered layer as a 0-based index: a fixed one, or `auto`'s best probe."""
    if layer == "auto":
        if "probe_auc" not in steering:
            raise SteerlightError(f"checkpoint {path}: layer 'auto' needs probe_auc, it has none")
        return int(steering["probe_auc"].argmax())
    n = structure.num_layers
    if isinstance(layer, (list, tuple)):
        raise SteerlightError(
            f"checkpoint {path} steers layers {list(layer)}; an export holds one layer's "
            "vector: export a checkpoint that steers one layer"
        )
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise SteerlightError(
            f"checkpoint {path}: layer {layer!r} is not one of the model's {n} decoder layers"
        )
    return layer % n


def _limits(target: str, positions: str) -> list[str]:
    """What `target` cannot express of the steered positions, in words."""
    notes = []
    if positions != "all":
        steered = {
            "generated": "only the generated tokens",
            "prompt_end+generated": "the last prompt token and the generated tokens",
        }.get(positions, repr(positions))
        notes.append(
            f"positions {positions!r} steers {steered}; {target} adds the vector at every "
            "position, the prompt included, as steerlight does with positions: all"
        )
    return notes

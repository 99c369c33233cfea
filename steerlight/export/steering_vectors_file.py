"""A file `steering_vectors.SteeringVector` is rebuilt from (the `steering-vectors` library).

``SteeringVector(layer_activations, layer_type)`` adds ``multiplier * layer_activations[i]`` to
the output of layer ``i`` of the layer type, at every position by default; ``decoder_block``
layers are found by a name template such as ``model.layers.{num}``, which the library guesses
from the model or takes as ``layer_config``. The file (`torch.save`, readable with
``torch.load(..., weights_only=True)``) holds::

    {"layer_activations": {layer: Tensor(hidden)},   # the whole added vector: multiplier 1
     "layer_type": "decoder_block",
     "layer_config": {"decoder_block": "model.layers.{num}"},
     "steerlight": {...}}                            # where it came from
"""

from __future__ import annotations

from pathlib import Path

import torch

from steerlight.export.state import ExportState

LAYER_TYPE = "decoder_block"


def write(state: ExportState, path: Path) -> None:
    """Write the vector (direction times coefficient) keyed by its 0-based decoder layer."""
    torch.save(
        {
            "layer_activations": {state.layer: state.vector.contiguous()},
            "layer_type": LAYER_TYPE,
            "layer_config": {LAYER_TYPE: state.structure.layers_name + ".{num}"},
            "steerlight": state.provenance(),
        },
        path,
    )


def usage(state: ExportState, out: Path) -> str:
    """Python that steers a loaded model with the file."""
    path = str(out.resolve())
    return (
        f"d = torch.load({path!r}, weights_only=True); "
        "with steering_vectors.SteeringVector(d['layer_activations'], d['layer_type'])"
        ".apply(model, layer_config=d['layer_config']): model.generate(...)"
    )

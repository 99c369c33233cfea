"""A llama.cpp control vector: the GGUF that `--control-vector` / `--control-vector-scaled` load.

As llama.cpp's ``common_control_vector_load_one`` (common/common.cpp) reads it and repeng's
``ControlVector.export_gguf`` and llama.cpp's cvector-generator write it:

- ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's
  architecture, e.g. ``llama``) and ``controlvector.layer_count`` (the number of direction
  tensors); the loader reads none of them;
- one 1-D F32 tensor ``direction.{il}`` of ``n_embd`` values per steered layer, multiplied by
  the strength given on the command line (1 for ``--control-vector``) and added to the
  output (``l_out``) of decoder layer ``il``, 0-based as the graph's layer loop counts, at every
  position. ``direction.0`` is refused ("invalid (zero) direction tensor layer index"): the
  output of the first layer cannot be steered.

Checked in llama.cpp's source: ``common_control_vector_load_one`` puts ``direction.N`` at
``data[n_embd * (N - 1)]`` ("layer 1 at [0]"); ``llama_adapter_cvec::apply`` copies that slot
into ``tensors[N]`` (``init`` pushes ``nullptr`` for layer 0: "there's never a tensor for layer
0"); each model graph ends layer ``il`` with ``cur = build_cvec(cur, il)`` right after the FFN
residual add, and ``tensor_for(il)`` returns ``tensors[il]``. So ``direction.N`` is added to the
output of 0-based decoder layer N, where steerlight's hook adds layer N's vector: layer L is
``direction.L``, with no offset, and layer 0 cannot be written.
The file's ``steerlight.*`` keys record where it came from.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from steerlight.errors import SteerlightError
from steerlight.export.state import ExportState

ARCH = "controlvector"


def gguf_package() -> ModuleType:
    """The `gguf` package (llama.cpp's writer), or a one-line error naming the extra."""
    try:
        import gguf
    except ImportError:
        raise SteerlightError(
            "--format gguf needs the gguf package, which is not installed: "
            'pip install -e ".[export]" (or pip install gguf)'
        ) from None
    return gguf


def check_state(state: ExportState) -> None:
    """llama.cpp has no control vector for the output of decoder layer 0."""
    if state.layer == 0:
        raise SteerlightError(
            f"checkpoint {state.checkpoint} steers decoder layer 0, which --format gguf cannot "
            "hold: llama.cpp control vectors have no tensor for layer 0's output (its loader "
            "rejects direction.0); export it as lm-eval or steering-vectors, or search layers "
            "from 1 on (layer: {probe_top_k: N, min_layer: 1}, as configs/debug.yaml does)"
        )


def write(state: ExportState, path: Path) -> None:
    """Write the control vector: ``direction.{layer}`` = direction times coefficient."""
    gguf = gguf_package()
    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_string(f"{ARCH}.model_hint", state.structure.model_type)
    writer.add_uint32(f"{ARCH}.layer_count", 1)
    for key, value in state.provenance().items():
        if isinstance(value, str):
            writer.add_string(f"steerlight.{key}", value)
        elif isinstance(value, int):
            writer.add_int32(f"steerlight.{key}", value)
        elif isinstance(value, float):
            writer.add_float64(f"steerlight.{key}", value)
    writer.add_tensor(f"direction.{state.layer}", state.vector.numpy().astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def usage(state: ExportState, out: Path) -> str:
    """The llama.cpp command line (the base model converted to GGUF first)."""
    return (
        f"llama-cli -m MODEL.gguf --control-vector {out.resolve()}  "
        f"(MODEL.gguf: {state.model_path} converted with llama.cpp's "
        "convert_hf_to_gguf.py; `--control-vector-scaled FILE S` multiplies the strength by S)"
    )

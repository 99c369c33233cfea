"""Take a fitted steering configuration out of steerlight.

`export` writes a checkpoint's steering (vector, layer, strength) as a file another tool loads:

- ``lm-eval``: the steer file of lm-evaluation-harness's ``steered`` model (`lm_eval_file`),
- ``steering-vectors``: what ``steering_vectors.SteeringVector`` is rebuilt from
  (`steering_vectors_file`),
- ``gguf``: a llama.cpp control vector (`gguf_file`; needs the ``export`` extra).

Each target adds one fixed vector to the output of one decoder layer at every position, so a
DAC checkpoint is exported at its ``dac.alpha_max`` and ``positions`` other than ``all`` become
``all``; both are logged as warnings and returned in `Exported.warnings`. The exported strength
is what steerlight applies, as an absolute coefficient (`steerlight.export.state`).

    import steerlight.export
    done = steerlight.export.export("best", "lm-eval", "steer.pt", study_name="debug")
    print(done.usage)  # lm_eval --model steered --model_args pretrained=...,steer_path=...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from steerlight.errors import SteerlightError
from steerlight.export import gguf_file, lm_eval_file, steering_vectors_file
from steerlight.export.state import ExportState, read_state

log = logging.getLogger(__name__)

_TARGETS = {
    "lm-eval": lm_eval_file,
    "steering-vectors": steering_vectors_file,
    "gguf": gguf_file,
}
FORMATS: tuple[str, ...] = tuple(_TARGETS)
"""The formats `export` writes."""
_NAMES = {
    "lm-eval": "lm-eval's steered model",
    "steering-vectors": "steering_vectors.SteeringVector",
    "gguf": "a llama.cpp control vector",
}


@dataclass(frozen=True)
class Exported:
    """A written export: the file, what it steers and how to use it."""

    path: Path
    format: str
    state: ExportState
    usage: str
    """The command line (or Python) that loads the file."""

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the target cannot express of the checkpoint's steering."""
        return self.state.warnings


def export(
    ckpt: str | Path,
    format: str,
    out: str | Path,
    *,
    study_name: str | None = None,
    root: str | Path = "lightning_logs",
) -> Exported:
    """Write the steering of checkpoint `ckpt` as `format` to `out`.

    Args:
        ckpt: ``best`` (the best trial of `study_name`, or of the newest study under `root`),
            ``last`` (the newest checkpoint under `root`), or a checkpoint path.
        format: one of `FORMATS`.
        out: the file to write (replaced atomically if it exists).
        study_name: the study ``best`` reads.
        root: the folder holding the study folders and runs.

    Raises `SteerlightError` (one line) for an unknown format, an unwritable `out`, a missing
    optional package, or a checkpoint that does not steer.
    """
    from steerlight.checkpoint import check_checkpoint
    from steerlight.io import ensure_writable_dir
    from steerlight.layout import resolve_checkpoint

    if format not in _TARGETS:
        raise SteerlightError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    target = _TARGETS[format]
    out = Path(out).expanduser()
    if out.is_dir():
        raise SteerlightError(f"--out {out} is a folder: pass the file to write")
    if target is lm_eval_file:
        lm_eval_file.check_out(out)
    if target is gguf_file:
        gguf_file.gguf_package()  # before any work: a missing package is said first
    ensure_writable_dir(out.parent, "--out")
    path, _ = resolve_checkpoint(str(ckpt), study_name, Path(root))
    if str(ckpt) == "best":
        path = _steering_best(path)
    path = path.resolve()
    state = read_state(check_checkpoint(path), path, _NAMES[format])
    if target is gguf_file:
        gguf_file.check_state(state)
    for note in state.warnings:
        log.warning("warning: %s", note)
    _write(target, state, out)
    return Exported(out, format, state, target.usage(state, out))


def _steering_best(best: Path) -> Path:
    """`--ckpt best`, or the study's best steered trial where its best trial does not steer."""
    from steerlight.layout import best_steered_checkpoint, make_a_steering, unsteered_best

    unsteered = unsteered_best(best)
    if unsteered is None:
        return best
    steered = best_steered_checkpoint(best)
    if steered is None:
        raise SteerlightError(
            f"--ckpt best: nothing to export: {unsteered}; {make_a_steering(best)}"
        )
    log.warning("--ckpt best: %s; exporting that trial's steering", unsteered)
    return steered


def _write(target, state: ExportState, out: Path) -> None:
    """`target.write` into a temporary file beside `out`, renamed onto it once complete."""
    from steerlight.io import atomic_path

    try:
        with atomic_path(out) as tmp:
            target.write(state, tmp)
    except OSError as err:
        raise SteerlightError(f"--out {out}: cannot write it ({err.strerror or err})") from None

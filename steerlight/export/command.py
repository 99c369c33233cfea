"""`python -m steerlight export`: write a checkpoint's steering for another tool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from steerlight.errors import SteerlightError, exit_on_error, one_line
from steerlight.export import FORMATS, export

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

PROG = "python -m steerlight export"


def build_parser() -> ArgumentParser:
    """The export flags, each with its dash and its underscore spelling."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog=PROG,
        description="Write the steering of a checkpoint (vector, layer, strength) as a file "
        "that lm-evaluation-harness (`--model steered`), the steering-vectors library or "
        "llama.cpp (`--control-vector`) loads. Each adds one fixed vector at every position "
        "of one layer's output: a DAC checkpoint is exported at dac.alpha_max and positions "
        "other than `all` are steered everywhere; both are warned about.",
        default_env=False,
        exit_on_error=False,
    )
    parser.add_argument(
        "--ckpt",
        required=True,
        help="best: the best checkpoint of --study-name (default: the newest study under "
        "--root); last: the newest checkpoint under --root; or a checkpoint path.",
    )
    parser.add_argument(
        "--format",
        required=True,
        help=f"The target: {', '.join(FORMATS)}. lm-eval writes the steer file of "
        "lm-evaluation-harness's steered model (.pt); steering-vectors a torch file that "
        "steering_vectors.SteeringVector is rebuilt from; gguf a llama.cpp control vector "
        '(needs pip install -e ".[export]").',
    )
    parser.add_argument("--out", required=True, help="The file to write (replaced if it exists).")
    parser.add_argument(
        "--study_name",
        "--study-name",
        default=None,
        help="The study whose best checkpoint `--ckpt best` exports (default: the newest).",
    )
    parser.add_argument(
        "--root",
        default="lightning_logs",
        help="The folder that holds the study folders (and where --ckpt looks for runs).",
    )
    return parser


def run(argv: Sequence[str] | None = None) -> None:
    """Parse `argv`, export, print the file written and the command that uses it."""
    from jsonargparse import ArgumentError

    from steerlight.console import show_logs

    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:
        raise SteerlightError(f"{one_line(str(err))} (`--help` lists every flag)") from None
    show_logs()  # the warnings about what the target cannot express
    done = export(cfg.ckpt, cfg.format, cfg.out, study_name=cfg.study_name, root=cfg.root)
    state = done.state
    print(
        f"wrote {done.path} ({done.format}): {state.method} on {state.model_name_or_path}, "
        f"decoder layer {state.layer} output, coefficient {state.coefficient:.6g} "
        f"(strength {state.strength:g}, normalization {state.normalization})",
        flush=True,
    )
    print(f"use it: {done.usage}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line, with one-line errors and exit status 2."""
    exit_on_error("steerlight export", lambda: run(argv))

"""Where steerlight's files live: a study's folder and the verdict files of a tested checkpoint.

The one owner of these names: the search writes a study folder, `--ckpt best` reads it, and
`test` writes its verdict beside the checkpoint it tested.

    <root>/<study>/study.db              Optuna's SQLite storage (default storage)
    <root>/<study>/trials.csv            one row per trial
    <root>/<study>/best.yaml|.json|.ckpt the best trial's run config, summary and checkpoint
    <root>/<study>/best_steered.json     the best trial that steers (when the best does not)
    <root>/<study>/trial_NNNN/           each trial's TensorBoard run and checkpoints
    <root>/<study>/summary/              the study's figures (TensorBoard)
    <checkpoint folder>/verdicts/NNN/     one `test` run's verdict: final_results.json,
                                         predictions.jsonl, reproducibility.json (001, 002, ...)
    <checkpoint folder>/verdicts/latest  the newest verdict folder's name
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from steerlight.errors import SteerlightError

RESULTS = "final_results.json"
PREDICTIONS = "predictions.jsonl"
REPRODUCIBILITY = "reproducibility.json"
VERDICTS = "verdicts"
LATEST = "latest"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str) -> str:
    """A study name is one safe path component: it can never point outside `--root`."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name.endswith("."):
        raise SteerlightError(
            f"study name {name!r} is invalid: use letters, digits, '.', '_' and '-' "
            "(one folder name, at most 128 characters, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class StudyFolder:
    """The files of one study under `root`."""

    root: Path
    name: str

    def __post_init__(self) -> None:
        check_study_name(self.name)
        object.__setattr__(self, "root", Path(self.root))

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.path / 'study.db'}"

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def best_yaml(self) -> Path:
        return self.path / "best.yaml"

    @property
    def best_json(self) -> Path:
        return self.path / "best.json"

    @property
    def best_ckpt(self) -> Path:
        return self.path / "best.ckpt"

    @property
    def best_steered_json(self) -> Path:
        """The best complete trial that steers: its number, val/acc, params and checkpoint."""
        return self.path / "best_steered.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary"

    @staticmethod
    def trial_version(number: int) -> str:
        """The TensorBoard version (sub-folder) of trial `number`."""
        return f"trial_{number:04d}"


def find_best(root: Path, study: str | None) -> tuple[Path, Path]:
    """`--ckpt best`: the best checkpoint of `study` (or of the newest study) and its config."""
    root = Path(root)
    if study is not None:
        found = [p for p in [StudyFolder(root, study).best_ckpt] if p.is_file()]
    else:
        found = sorted(root.glob("*/best.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        where = f"study {study!r}" if study else "any study"
        raise SteerlightError(
            f"--ckpt best: {where} under {root}/ has no best.ckpt; "
            "run `python -m steerlight.search` first, or pass a checkpoint path"
        )
    return found[-1], found[-1].with_name("best.yaml")


def unsteered_best(best_ckpt: Path) -> str | None:
    """Where a study's best trial does not steer: a line that says so and names its best
    steered trial (best_steered.json) or that none completed; None where the best steers (or
    the study predates the `steers` record)."""
    import json

    try:
        best = json.loads(best_ckpt.with_name("best.json").read_text())
    except (OSError, ValueError):
        return None
    if best.get("steers", True):
        return None
    line = (
        f"study {best.get('study')!r}'s best trial ({best.get('trial')}, val/acc "
        f"{best.get('val_acc', float('nan')):.4f}) does not steer: no steered trial beat the "
        "unsteered baseline on val"
    )
    try:
        steered = json.loads(best_ckpt.with_name("best_steered.json").read_text())
    except (OSError, ValueError):
        return f"{line}, and none completed (pruned below it, or failed)"
    return (
        f"{line}; its best steered trial is {steered['trial']} (val/acc "
        f"{steered['val_acc']:.4f}, {steered['describe']}) at {steered['checkpoint']}"
    )


def make_a_steering(best_ckpt: Path) -> str:
    """What to run where a study has no steered trial to test or export."""
    return (
        "run more trials (the search command again with --n-trials 20 resumes the study), or "
        "fit one steering to compare and export (alpha 1 is not tuned; val scores it): "
        f"python -m steerlight fit --config {best_ckpt.with_name('best.yaml')} --model.alpha 1, "
        "then --ckpt last"
    )


def refuse_unsteered_best(best_ckpt: Path) -> None:
    """`test --ckpt best` where the best trial does not steer: one line, before any work."""
    unsteered = unsteered_best(best_ckpt)
    if not unsteered:
        return
    steered = best_steered_checkpoint(best_ckpt)
    then = f"test it anyway with --ckpt {steered}" if steered else make_a_steering(best_ckpt)
    raise SteerlightError(f"--ckpt best: {unsteered}; {then}")


def best_steered_checkpoint(best_ckpt: Path) -> Path | None:
    """The checkpoint of a study's best steered trial (None where there is none)."""
    import json

    try:
        path = Path(json.loads(best_ckpt.with_name("best_steered.json").read_text())["checkpoint"])
    except (OSError, ValueError, KeyError):
        return None
    return path if path.is_file() else None


def find_last(root: Path) -> Path:
    """`--ckpt last`: the newest checkpoint of any run under `root`."""
    found = sorted(Path(root).glob("**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SteerlightError(f"--ckpt last: no checkpoint under {root}/; run `fit` first")
    return found[-1]


def run_config(checkpoint: Path) -> Path | None:
    """The config of the run that wrote `checkpoint`: a study's best.yaml or a run's config.yaml."""
    for config in (checkpoint.with_name("best.yaml"), checkpoint.parent.parent / "config.yaml"):
        if config.is_file():
            return config
    return None


def new_verdict_dir(folder: Path) -> Path:
    """A new folder for one `test` run's verdict files under `folder`/verdicts: 001, 002, ...
    An earlier verdict is never overwritten (evidence), also when two runs end together."""
    parent = Path(folder) / VERDICTS
    parent.mkdir(parents=True, exist_ok=True)
    number = max((int(p.name) for p in parent.iterdir() if p.name.isdigit()), default=0)
    while True:
        number += 1
        try:
            (parent / f"{number:03d}").mkdir()
        except FileExistsError:  # another run took this number first
            continue
        return parent / f"{number:03d}"


def mark_latest(verdict: Path) -> None:
    """Point `verdicts/latest` at the verdict folder just written."""
    from steerlight.io import write_text

    write_text(verdict.parent / LATEST, verdict.name + "\n")


def latest_verdict(folder: Path) -> Path:
    """The newest verdict folder under `folder` (a checkpoint's folder or a study's)."""
    parent = Path(folder) / VERDICTS
    try:
        found = parent / (parent / LATEST).read_text().strip()
    except OSError:
        found = parent
    if not (found / RESULTS).is_file():
        raise SteerlightError(
            f"{folder} holds no verdict ({VERDICTS}/{LATEST} names none): run "
            "`python -m steerlight test --ckpt ...` first"
        )
    return found


def resolve_checkpoint(spec: str, study: str | None, root: Path) -> tuple[Path, Path | None]:
    """A checkpoint named by `best`, `last` or a path, and the config of the run that wrote it."""
    if spec == "best":
        return find_best(root, study)
    path = find_last(root) if spec == "last" else Path(spec)
    if not path.is_file():
        raise SteerlightError(f"--ckpt {spec}: no such checkpoint file (or use best / last)")
    return path, run_config(path)

"""Everything steerlight draws or writes to TensorBoard beside the scalars Lightning logs."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from steerlight.steering import method as methods

SAMPLE_COLUMNS = ("question", "completion", "extracted", "gold", "correct")


HPARAMS_FIRST = ("method", "layer", "alpha", "positions", "normalization", "read_position")

LEADING = {"method": "1 method", "layer": "2 layer", "strength": "3 strength"}
"""TensorBoard's HPARAMS tab sorts the columns by name and shows the first five, then the
first five metrics (`METRICS`): these names sort first, so a run reads as what was steered
how strongly (`alpha`, or DAC's `dac.alpha_max`), then its accuracy."""

METRICS = ("val/acc", "test/acc", "acc/val_baseline", "test/baseline_acc_strict")
METRICS += ("val/acc_flexible", "test/acc_flexible")
"""The metric columns of every run (a run's own scalars fill them; the rest stay blank), the
same in every run: TensorBoard takes one run's list for the whole table."""


def hparams_columns(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings for TensorBoard's HPARAMS tab: what is steered first, then decoding
    and the model; no internal fields or paths, and nothing the method does not use (blank)."""
    method = methods.get(hparams.get("method", "caa"))
    out = {k: hparams[k] for k in HPARAMS_FIRST if k in hparams}
    if isinstance(out.get("layer"), list):
        out["layer"] = ",".join(map(str, out["layer"]))
    if method.strength != "alpha":
        out.pop("alpha", None)  # DAC's strength is dac.alpha_max; `none` has none
    group = (method.strength or "").partition(".")[0]
    if group in hparams and isinstance(hparams[group], Mapping):  # `dac.*`
        out.update({f"{group}.{k}": v for k, v in dict(hparams[group]).items()})
    options = method.options(hparams.get("options"))
    if options is not None:
        out.update({f"options.{k}": v for k, v in dataclasses.asdict(options).items()})
    if method.strength is None:
        out = {"method": method.name}
    out.update({f"generation.{k}": v for k, v in dict(hparams.get("generation") or {}).items()})
    for key in ("pairs", "preset", "dtype", "seed"):
        if key in hparams:
            out[key] = hparams[key]
    lead = {LEADING["method"]: out.pop("method", method.name)}
    if "layer" in out:
        lead[LEADING["layer"]] = out.pop("layer")
    lead[LEADING["strength"]] = _strength(hparams, method.strength)
    out.pop("alpha", None)  # (it is the strength)
    out = {**lead, **out}
    name = str(hparams.get("model_name_or_path", ""))
    out["model"] = (
        name
        if name.count("/") <= 1 and not name.startswith(("/", "."))
        else (
            name.rstrip("/").rsplit("/", 1)[-1]  # a local folder: its name, not the path
        )
    )
    return out


def _strength(hparams: Mapping[str, Any], name: str | None) -> float:
    """The value of a method's strength setting (`alpha`, `dac.alpha_max`); 0 without one."""
    if name is None:
        return 0.0
    group, _, key = name.rpartition(".")
    return (dict(hparams.get(group) or {}) if group else hparams).get(key, 0.0)


_WITH_HPARAMS: weakref.WeakSet = weakref.WeakSet()
"""The writers whose run has its HPARAMS row (a run has one, however many rounds it logs)."""


def log_hparams(writer, columns: Mapping[str, Any]) -> None:
    """A run's row in TensorBoard's HPARAMS tab, its metric columns named by `METRICS`; once
    per writer (the metric values are the scalars', read by TensorBoard as they come).

    Written straight to the event file: Lightning's `log_hyperparams(params, metrics)` also
    logs each metric as a scalar, which would put `val/acc` on its chart twice.
    """
    from torch.utils.tensorboard.summary import hparams

    if writer in _WITH_HPARAMS:
        return
    _WITH_HPARAMS.add(writer)
    row = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in columns.items()}
    for summary in hparams(row, dict.fromkeys(METRICS, 0.0)):
        writer._get_file_writer().add_summary(summary)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def auc_figure(auc: Sequence[float]):
    """Bar chart of held-out probe AUC per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, len(auc) * 0.3), 3))
    ax.bar(range(len(auc)), auc)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="layer", ylabel="held-out AUC", ylim=(0, 1), title="probe AUC per layer")
    fig.tight_layout()
    return fig


def sample_rows(
    questions: Sequence[str], texts: Sequence[str], golds: Sequence[str], form: str, room: int
) -> list[dict[str, Any]]:
    """Up to `room` sample generations with their strict extraction, for `samples_table`."""
    from steerlight.answers import extract, is_correct

    rows = []
    for q, t, g in list(zip(questions, texts, golds, strict=True))[: max(room, 0)]:
        pred = extract(t, "strict", form)
        rows.append(
            dict(question=q, completion=t, extracted=pred, gold=g, correct=is_correct(pred, g))
        )
    return rows


def samples_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Sample generations as a markdown table (TensorBoard's TEXT tab renders it)."""
    table = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|---" * len(SAMPLE_COLUMNS) + "|"]
    for row in rows:
        cells = (str(row[c]).replace("|", "\\|").replace("\n", "<br>") for c in SAMPLE_COLUMNS)
        table.append("| " + " | ".join(cells) + " |")
    return "\n".join(table)


def log_stage(
    writer, stage: str, samples: Sequence[Mapping[str, Any]], alphas: Sequence[Tensor], step: int
) -> None:
    """A val or test pass's sample generations (TEXT) and DAC's strengths per step."""
    if samples:
        writer.add_text(f"{stage}/samples", samples_table(samples), step)
    log_dac_alphas(writer, stage, alphas)


def log_dac_alphas(writer, stage: str, alphas: Sequence[Tensor]) -> None:
    """DAC's alpha_t per generation step: mean/min/max over the rows still generating.

    One scalar tag per statistic (`add_scalar`), not `add_scalars`, which makes a TensorBoard
    sub-run per statistic.
    """
    if not alphas:
        return
    width = max(a.shape[1] for a in alphas)
    pad = [torch.nn.functional.pad(a, (0, width - a.shape[1]), value=float("nan")) for a in alphas]
    table = torch.cat(pad)
    live = ~table.isnan()
    for t in range(width):
        column = table[live[:, t], t]
        if len(column):
            for stat, value in (
                ("mean", column.mean()),
                ("min", column.min()),
                ("max", column.max()),
            ):
                writer.add_scalar(f"{stage}/dac_alpha_{stat}_by_step", float(value), t)


def strength_figure(trials: Sequence[Any], title: str):
    """Val accuracy against steering strength, one series per method x layer.

    Each method's strength is its own (`SteeringMethod.strength`: DAC's `dac.alpha_max`).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[str, list[tuple[float, float]]] = {}
    for t in trials:
        method = t.params.get("method", "caa")
        strength = t.params.get(methods.get(method).strength or "")
        if strength is None:
            continue
        label = f"{method} layer {t.params.get('layer', 'auto')}"
        groups.setdefault(label, []).append((strength, t.value))
    for label, points in sorted(groups.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, "o-", label=label)
    ax.set(xlabel="strength (alpha; dac: alpha_max)", ylabel="val accuracy (strict)")
    ax.set_title(title)
    if groups:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def method_figure(trials: Sequence[Any], title: str):
    """Val accuracy per method over a study's trials (a strip plot): complete trials filled, with
    the best marked and labelled; pruned ones hollow, at the accuracy of the rounds they ran; the
    unsteered baseline trial a dashed line. Trials without a `method` count as `caa`."""
    plt = _pyplot()
    points: dict[str, list[tuple[float, bool]]] = {}
    baseline = None
    for t in trials:
        rounds = [v for v in (t.intermediate_values or {}).values() if v == v]  # (NaN: none)
        done = t.value is not None
        value = t.value if done else (rounds[-1] if rounds else None)
        if t.value is not None and t.user_attrs.get("baseline"):
            baseline = float(t.value)
        elif value is not None:
            points.setdefault(str(t.params.get("method", "caa")), []).append((float(value), done))
    names = sorted(points)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.5))
    for i, name in enumerate(names):
        values = [v for v, _ in points[name]]
        xs = (i + torch.linspace(-0.15, 0.15, len(values))).tolist() if len(values) > 1 else [i]
        for x, (v, done) in zip(xs, points[name], strict=True):
            ax.scatter([x], [v], s=22, color=f"C{i}", facecolors=f"C{i}" if done else "none")
        best = [v for v, done in points[name] if done]
        if best:
            ax.plot([i - 0.3, i + 0.3], [max(best)] * 2, color="black", linewidth=2)
            ax.annotate(f"{max(best):.3f}", (i, max(best)), ha="center", va="bottom", fontsize=8)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", linewidth=1, label="unsteered")
        ax.legend(fontsize="small", loc="lower right")
    counts = {n: sum(done for _, done in points[n]) for n in names}
    ax.set_xticks(range(len(names)), [f"{n}\n{counts[n]}/{len(points[n])}" for n in names])
    ax.set(ylabel="val accuracy (strict)", title=f"{title}: val accuracy per method")
    ax.set_xlabel("method, complete/all trials (hollow: pruned)")
    fig.tight_layout()
    return fig

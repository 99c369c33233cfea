"""Bad input through the real command lines: one test per case.

Each case runs `python -m steerlight ...` or `python -m steerlight.search ...` in this process
(their `main()` with `sys.argv`) and checks: a non-zero exit, exactly one error line on stderr
that names the bad value and says what would be valid, no traceback, and every file that
existed before (a checkpoint, a study, results, data) unchanged.

Layer-level variants live beside their code: more malformed rows and val sizes in
test_data.py, bad search spaces in test_search.py, the cache's own corruption handling in
test_steering.py, and a checkpoint from another model through a bare Trainer in
test_module.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_env

import steerlight.__main__
import steerlight.search.command
from steerlight.errors import SteerlightError

BASE = {
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "logger": False},
    "model": {"layer": 1, "alpha": 2.0, "generation": {"max_new_tokens": 3}},
    "data": {
        "source": "synthetic",
        "synthetic_train_size": 60,
        "synthetic_test_size": 4,
        "val_size": 4,
        "n_shots": 0,
        "limit_train": 4,
        "batch_size": 2,
    },
}
SPACE = {"layer": [0, 1], "alpha": {"low": -2.0, "high": 2.0}}


@dataclass
class Workspace:
    """Files the cases point at, and the artefacts no case may touch."""

    root: Path
    model: Path
    other_model: Path
    remote_code_model: Path
    checkpoint: Path
    replaced_checkpoint: Path

    def config(
        self, name: str, model: Path | None = None, runs: str = "runs", **sections: dict
    ) -> Path:
        """A run config in the workspace: BASE with `sections` merged in."""
        config = json.loads(json.dumps(BASE))
        config["model"].update(model_name_or_path=str(model or self.model))
        config["model"]["cache_dir"] = str(self.root / "cache")
        config["trainer"]["default_root_dir"] = str(self.root / runs)
        for key, values in sections.items():
            config.setdefault(key, {}).update(values)
        path = self.root / name
        path.write_text(yaml.safe_dump(config))
        return path

    def data_folder(self, name: str, edit: Callable[[list[dict], list[dict]], None]) -> Path:
        """A local GSM8K-format folder of synthetic rows, after `edit(train, test)`."""
        from steerlight.data.synthetic import synthetic_splits

        rows = synthetic_splits(n_train=60, n_test=4, seed=1234)
        train, test = list(rows["train"]), list(rows["test"])
        edit(train, test)
        folder = self.root / name
        folder.mkdir()
        for split, split_rows in (("train", train), ("test", test)):
            lines = [r if isinstance(r, str) else json.dumps(r) + "\n" for r in split_rows]
            (folder / f"{split}.jsonl").write_text("".join(lines))
        return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir, single_torch_thread) -> Workspace:
    """A fitted checkpoint, a study over SPACE, a checkpoint whose model folder now holds other
    weights, and a model that needs its own code."""
    from random_models import build_tiny_model

    from steerlight.cli import cli_main

    root = tmp_path_factory.mktemp("bad_input")
    remote = root / "remote_code_model"
    shutil.copytree(tiny_llama_dir, remote)
    # A model type transformers does not know, whose classes live in the folder's own code.
    config = json.loads((remote / "config.json").read_text())
    config["model_type"] = "steerlight_custom"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n"
        "    model_type = 'steerlight_custom'\n"
    )
    (remote / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import "
        "CustomConfig\n\n\nclass CustomForCausalLM(LlamaForCausalLM):\n"
        "    config_class = CustomConfig\n"
    )
    ws = Workspace(root, tiny_llama_dir, root / "replaced_model", remote, Path(), Path())
    fit = cli_main(["fit", "--config", str(ws.config("base.yaml"))])
    ws.checkpoint = Path(fit.trainer.checkpoint_callback.last_model_path)
    # A checkpoint fitted on a folder whose weights were replaced afterwards (retrained in
    # place): the checkpoint names the folder, but the model there is another one now.
    shutil.copytree(tiny_llama_dir, ws.other_model)
    config = ws.config("replaced.yaml", model=ws.other_model, runs="runs_replaced")
    fit = cli_main(["fit", "--config", str(config)])
    ws.replaced_checkpoint = Path(fit.trainer.checkpoint_callback.last_model_path)
    build_tiny_model("llama", ws.other_model, seed=1)
    study_config = ws.config("study.yaml", search=SPACE)
    steerlight.search.command.run(
        ["--config", str(study_config), "--root", str(root / "studies"), "--n-trials", "1"]
    )
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` and a hash of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(entry: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python -m steerlight ARGV` (or `.search`) in this process: exit status and stderr."""
    main = {"steerlight": steerlight.__main__.main, "search": steerlight.search.command.main}[entry]
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def assert_refused(ws: Workspace, entry: str, argv: list[str], expect, monkeypatch, capsys):
    """Non-zero exit, one error line holding every `expect` string, nothing existing changed."""
    before = snapshot(ws.root)
    code, err = run_cli(entry, argv, monkeypatch, capsys)
    assert code not in (0, None)
    assert "Traceback" not in err, err
    prefix = "steerlight.search: error:" if entry == "search" else "steerlight: error:"
    errors = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, err
    assert "usage:" not in err, "one line, not the whole usage text"
    for text in expect:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    after = snapshot(ws.root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or lost: {changed}"


def fit(ws: Workspace, *flags: str, config: str = "base.yaml") -> list[str]:
    return ["fit", "--config", str(ws.root / config), *flags]


# -- the matrix ----------------------------------------------------------------------------------


def test_model_path_that_does_not_exist(workspace, monkeypatch, capsys):
    missing = str(workspace.root / "no_such_model")
    argv = fit(workspace, "--model.model_name_or_path", missing)
    expect = [missing, "does not exist", "model id"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_layer_out_of_range(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--model.layer", "7")
    expect = ["layer 7 is out of range", "use 0..1"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_unknown_method(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--model.method", "cca")
    expect = ["model.method", "cca", "caa", "dac"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_unknown_preset(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--data.preset", "gsm9k")
    expect = ["gsm9k", "'gsm8k'", "'gsm8k_cot'"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_alpha_nan_in_the_config(workspace, monkeypatch, capsys):
    path = workspace.config("nan.yaml")
    path.write_text(path.read_text().replace("alpha: 2.0", "alpha: .nan"))
    argv = ["fit", "--config", str(path)]
    expect = ["alpha=nan", "finite number"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_alpha_infinite_on_the_command_line(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--model.alpha", "inf")
    expect = ["model.alpha", "inf", "finite number"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_negative_val_size(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--data.val_size", "-3")
    expect = ["val_size=-3", "at least 1"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_val_size_larger_than_train(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--data.val_size", "1000")
    expect = ["val_size=1000", "use 1..59"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_malformed_yaml(workspace, monkeypatch, capsys):
    path = workspace.root / "malformed.yaml"
    path.write_text("model:\n  alpha: [1.0,\n  layer: 2\n")
    argv = ["fit", "--config", str(path)]
    expect = [str(path), "not valid YAML", "line 4"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_config_key_that_does_not_exist(workspace, monkeypatch, capsys):
    path = workspace.config("typo.yaml")
    path.write_text(path.read_text().replace("alpha: 2.0", "alpah: 2.0"))
    argv = ["fit", "--config", str(path)]
    expect = ["model.alpah", "did you mean 'model.alpha'"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_flag_that_does_not_exist(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--model.alpah", "1.0")
    expect = ["--model.alpah", "did you mean 'model.alpha'"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_config_file_that_does_not_exist(workspace, monkeypatch, capsys):
    missing = str(workspace.root / "nothere.yaml")
    argv = ["fit", "--config", missing]
    assert_refused(workspace, "steerlight", argv, [missing, "does not exist"], monkeypatch, capsys)


def test_malformed_jsonl(workspace, monkeypatch, capsys):
    def break_line_6(train, test):
        train[5] = '{"question": "How many?", "answer": \n'

    folder = workspace.data_folder("bad_json", break_line_6)
    argv = fit(workspace, "--data.source", str(folder))
    expect = [f"{folder}/train.jsonl line 6", "not valid JSON", "one JSON object"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_gold_answer_without_hashes(workspace, monkeypatch, capsys):
    def drop_hashes(train, test):
        test[1] = {**test[1], "answer": test[1]["answer"].replace("####", "The answer is")}

    folder = workspace.data_folder("no_hashes", drop_hashes)
    argv = fit(workspace, "--data.source", str(folder))
    expect = [f"{folder}/test.jsonl line 2", "'answer'", "'#### <number>'"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_empty_split(workspace, monkeypatch, capsys):
    folder = workspace.data_folder("empty_test", lambda train, test: test.clear())
    argv = fit(workspace, "--data.source", str(folder))
    expect = [f"{folder}/test.jsonl", "split is empty", "at least one question"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_unwritable_search_folder(workspace, monkeypatch, capsys):
    # A regular file where the output folder should be: unwritable even for root.
    blocker = workspace.root / "blocker"
    blocker.write_text("keep me\n")
    argv = ["--config", str(workspace.root / "study.yaml"), "--root", str(blocker)]
    expect = ["--root", str(blocker), "use a writable folder"]
    assert_refused(workspace, "search", argv, expect, monkeypatch, capsys)


def test_unwritable_fit_folder(workspace, monkeypatch, capsys):
    blocker = workspace.root / "blocker"
    blocker.write_text("keep me\n")
    argv = fit(workspace, "--trainer.default_root_dir", str(blocker / "runs"))
    expect = ["trainer.default_root_dir", str(blocker), "use a writable folder"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_study_name_reused_with_an_incompatible_space(workspace, monkeypatch, capsys):
    config = workspace.config("other_space.yaml", search={"layer": [0, 1], "alpha": [0.0, 1.0]})
    argv = ["--config", str(config), "--root", str(workspace.root / "studies")]
    argv += ["--study-name", "study"]
    expect = ["study 'study'", "alpha over floats -2.0..2.0", "choices [0.0, 1.0]", "--study-name"]
    assert_refused(workspace, "search", argv, expect, monkeypatch, capsys)


def test_corrupted_checkpoint(workspace, monkeypatch, capsys):
    bad = workspace.root / "corrupted.ckpt"
    bad.write_bytes(b"PK\x03\x04 these bytes are not a checkpoint")
    argv = ["test", "--config", str(workspace.root / "base.yaml"), "--ckpt_path", str(bad)]
    expect = [str(bad), "truncated or corrupt", "re-create it"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_truncated_checkpoint(workspace, monkeypatch, capsys):
    cut = workspace.root / "truncated.ckpt"
    data = workspace.checkpoint.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # what a non-atomic write leaves after a kill
    argv = ["test", "--config", str(workspace.root / "base.yaml"), "--ckpt_path", str(cut)]
    expect = [str(cut), "truncated or corrupt"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_checkpoint_not_written_by_steerlight(workspace, monkeypatch, capsys):
    import torch

    foreign = workspace.root / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    argv = ["test", "--config", str(workspace.root / "base.yaml"), "--ckpt_path", str(foreign)]
    expect = [str(foreign), "not written by steerlight"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_checkpoint_with_arguments_this_version_does_not_know(workspace, monkeypatch, capsys):
    import torch

    old = torch.load(workspace.checkpoint, weights_only=True)
    old["hyper_parameters"]["alpah"] = old["hyper_parameters"].pop("alpha")  # a renamed argument
    path = workspace.root / "old_version.ckpt"
    torch.save(old, path)
    argv = ["test", "--config", str(workspace.root / "base.yaml"), "--ckpt_path", str(path)]
    expect = [str(path), "alpah", "did you mean 'model.alpha'", "fit a new checkpoint"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_checkpoint_from_another_model(workspace, monkeypatch, capsys):
    # (test_module.py refuses one through a bare Trainer; here through the command line)
    argv = ["test", "--config", str(workspace.root / "replaced.yaml")]
    argv += ["--ckpt_path", str(workspace.replaced_checkpoint)]
    expect = ["checkpoint was fitted on", str(workspace.other_model), "weights", "fit a new"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_ckpt_best_without_a_study(workspace, monkeypatch, capsys):
    empty = workspace.root / "no_studies"
    empty.mkdir(exist_ok=True)
    argv = ["test", "--config", str(workspace.root / "base.yaml"), "--ckpt", "best"]
    argv += ["--logs_root", str(empty)]
    expect = ["--ckpt best", str(empty), "python -m steerlight.search"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_remote_code_needed_but_not_allowed(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--model.model_name_or_path", str(workspace.remote_code_model))
    expect = [str(workspace.remote_code_model), "model.trust_remote_code: true"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_chat_preset_on_a_tokenizer_without_template(workspace, monkeypatch, capsys):
    argv = fit(workspace, "--data.preset", "chat")
    expect = ["preset 'chat'", "no", "chat template", "use preset gsm8k"]
    assert_refused(workspace, "steerlight", argv, expect, monkeypatch, capsys)


def test_storage_that_cannot_be_reached(workspace, monkeypatch, capsys):
    url = "postgresql+psycopg2://nobody:secret@127.0.0.1:1/nothing"
    argv = ["--config", str(workspace.root / "study.yaml"), "--storage", url]
    argv += ["--root", str(workspace.root / "studies")]
    expect = ["127.0.0.1:1", "database server"]
    assert_refused(workspace, "search", argv, expect, monkeypatch, capsys)
    assert "secret" not in capsys.readouterr().err


def test_unknown_sampler(workspace, monkeypatch, capsys):
    argv = ["--config", str(workspace.root / "study.yaml"), "--sampler", "grid"]
    assert_refused(workspace, "search", argv, ["grid", "tpe", "random"], monkeypatch, capsys)


@pytest.mark.parametrize("flag", ["--max-trials", "--heartbeat-interval"])
def test_search_counts_below_one(workspace, flag, monkeypatch, capsys):
    argv = ["--config", str(workspace.root / "study.yaml"), flag, "0"]
    argv += ["--root", str(workspace.root / "studies")]
    assert_refused(workspace, "search", argv, [f"{flag} 0", "1 or more"], monkeypatch, capsys)


# -- not a refusal: a corrupted cache is rebuilt ---------------------------------------------------


def test_corrupted_activation_cache_is_rebuilt_with_a_warning(workspace, monkeypatch, capsys):
    from safetensors import safe_open

    cache_files = sorted((workspace.root / "cache").glob("*.safetensors"))
    assert cache_files, "the workspace fit filled the cache"
    for path in cache_files:
        path.write_bytes(path.read_bytes()[:40])  # truncated, as after a crash
    monkeypatch.setattr(sys, "argv", ["steerlight", *fit(workspace)])
    pattern = r"activation cache (\S+) is unusable .* rebuilding it"
    with pytest.warns(UserWarning, match=pattern) as record:
        steerlight.__main__.main()  # no SystemExit: the run succeeds
    rebuilt = {m[1] for w in record if (m := re.match(pattern, str(w.message)))}
    assert rebuilt and rebuilt <= {str(p) for p in cache_files}
    for path in rebuilt:
        with safe_open(path, framework="pt") as f:
            assert list(f.keys()), f"{path} was rewritten whole"


# -- --verbose -------------------------------------------------------------------------------------


def test_verbose_raises_with_the_traceback(workspace, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["steerlight", *fit(workspace, "--model.layer", "7")])
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--verbose"])
    with pytest.raises(SteerlightError, match="layer 7 is out of range"):
        steerlight.__main__.main()


def test_a_real_process_prints_one_line_or_with_verbose_a_traceback(workspace):
    argv = [sys.executable, "-m", "steerlight", *fit(workspace, "--model.layer", "7")]
    quiet = subprocess.run(argv, capture_output=True, text=True, env=subprocess_env())
    loud = subprocess.run(
        [*argv, "--verbose"], capture_output=True, text=True, env=subprocess_env()
    )
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.count("steerlight: error: layer 7 is out of range") == 1
    assert loud.returncode != 0 and "Traceback" in loud.stderr

"""The embedded tiny model's build and cache, on a micro recipe (seconds, not the real build)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import steerlight.tiny.__main__ as tiny_cli
from steerlight.data.prompts import get_preset
from steerlight.data.splits import holdout_indices, normalize_question
from steerlight.data.synthetic import synthetic_splits
from steerlight.errors import SteerlightError
from steerlight.model.loading import load_model
from steerlight.tiny import TinyRecipe, cache, data, resolve_model_name, tiny_model_path, train

MICRO = TinyRecipe(
    n_train=80,
    n_test=20,
    val_holdout=20,
    vocab_size=300,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=512,
    seq_len=384,
    batch_size=3,
    drill_rows=1,
    row_problems=(0.5, 0.5),
    steps=3,
    warmup_steps=1,
    question_loss=0.5,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(STEERLIGHT_HOME, model folder) of one micro build, shared by the tests that only read it."""
    home = tmp_path_factory.mktemp("steerlight_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERLIGHT_HOME", str(home))
        path = tiny_model_path(MICRO)
    return home, path


def _tmp_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if ".tmp-" in p.name)


def test_build_is_a_standard_llama_loaded_by_auto_classes(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    home, path = built
    assert path == home / "tiny" / MICRO.key()
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.hidden_size == MICRO.hidden_size
    assert model.config.num_hidden_layers == MICRO.num_layers
    assert model.config.num_attention_heads == MICRO.num_heads
    assert model.config.vocab_size == len(tok) <= MICRO.vocab_size
    assert model.dtype == torch.bfloat16  # stored in bfloat16: half the file
    assert load_model(str(path)).dtype == torch.float32  # how steerlight loads it by default
    # Digits are single tokens; the special tokens match the generation config.
    assert tok.convert_ids_to_tokens(tok("2024", add_special_tokens=False)["input_ids"]) == list(
        "2024"
    )
    assert (tok.pad_token, tok.eos_token) == ("<pad>", "</s>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    meta = json.loads((path / "tiny_recipe.json").read_text())
    assert meta["key"] == MICRO.key() and meta["recipe"] == MICRO.as_json()
    assert meta["metrics"]["parameters"] == sum(p.numel() for p in model.parameters())
    # It generates (greedy) from a gsm8k prompt.
    enc = tok([get_preset("gsm8k").render("Mia has 3 apples. How many?")], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_two_builds_of_a_recipe_are_the_same_bytes(built, tmp_path, monkeypatch):
    # What lets a rebuild be checked against the shipped copy: a build is deterministic.
    home, path = built
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the build pins its own thread count, whatever the caller's
    try:
        again = tiny_model_path(MICRO)
    finally:
        torch.set_num_threads(threads)
    assert again != path
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (path / name).read_bytes(), name
    marker = json.loads((again / "tiny_recipe.json").read_text())
    assert marker["weights_sha256"] == cache.weights_sha256(path)


def test_a_stopped_build_installs_nothing(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    class StopAtFirstStep(pl.Callback):  # as Lightning does on SIGTERM: stop, do not raise
        def __init__(self, *args) -> None:
            pass

        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = True

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    monkeypatch.setattr(train, "StepProgress", StopAtFirstStep)
    with pytest.raises(SteerlightError, match="stopped at step 1/3"):
        tiny_model_path(dataclasses.replace(MICRO, seed=4))
    assert [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.endswith(".lock")] == []


def test_second_call_reuses_the_cache(built, monkeypatch):
    home, path = built
    monkeypatch.setenv("STEERLIGHT_HOME", str(home))
    marker = path / "tiny_recipe.json"
    before = marker.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the cached tiny model was rebuilt")

    monkeypatch.setattr(train, "build_tiny_model", no_build)
    assert tiny_model_path(MICRO) == path
    assert marker.stat().st_mtime_ns == before
    assert _tmp_dirs(path.parent) == []


def test_cache_key_follows_every_recipe_field():
    assert TinyRecipe().key() == TinyRecipe().key()
    assert MICRO.key() == dataclasses.replace(MICRO).key()
    keys = {MICRO.key()}
    for f in dataclasses.fields(TinyRecipe):
        value = getattr(MICRO, f.name)
        if isinstance(value, tuple):
            changed = (*value, 1.0)
        elif isinstance(value, float):
            changed = value * 2 + 0.5
        else:
            changed = value + 1
        keys.add(dataclasses.replace(MICRO, **{f.name: changed}).key())
    assert len(keys) == 1 + len(dataclasses.fields(TinyRecipe))
    assert TinyRecipe().key() not in keys


def test_build_logs_and_leaves_no_temp_folder(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    before = torch.random.get_rng_state()
    with caplog.at_level(logging.INFO, logger="steerlight"):
        path = tiny_model_path(dataclasses.replace(MICRO, seed=1))
    assert "building the embedded tiny model" in caplog.text
    # progress as plain lines (this output is not a terminal): steps, rate, loss, ETA
    lines = [r.getMessage() for r in caplog.records if r.name == "steerlight.progress"]
    assert lines[0].startswith("tiny model build: 1/3 steps (33%)"), lines
    assert "steps/s" in lines[0] and "ETA" in lines[0] and "loss" in lines[0]
    assert lines[-1].startswith("tiny model build: 3/3 steps (100%)") and " in " in lines[-1]
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert path.parent == tmp_path / "tiny"
    assert _tmp_dirs(path.parent) == []
    # Only the model, its tokenizer and the recipe: no checkpoints or logs from Lightning.
    names = {p.name for p in path.iterdir()}
    assert names <= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "tiny_recipe.json",
    }, names


def test_leftover_temp_folders_and_a_broken_cache_are_handled(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    recipe = dataclasses.replace(MICRO, seed=2)
    parent = tmp_path / "tiny"
    parent.mkdir()
    # A crashed build left its temp folders (one recent, one old) and a half-written folder.
    recent = parent / f".{recipe.key()}.tmp-recent"
    old = parent / f".{recipe.key()}.tmp-old"
    for d in (recent, old):
        d.mkdir()
        (d / "config.json").write_text("{")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    broken = parent / recipe.key()
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")

    path = tiny_model_path(recipe)
    assert path == broken
    assert (path / "tiny_recipe.json").is_file() and (path / "model.safetensors").is_file()
    assert not old.exists()  # stale leftovers are cleaned up
    assert recent.exists()  # a recent one may belong to a live builder: left alone
    assert _tmp_dirs(parent) == [recent]


def test_a_concurrent_builder_that_finishes_first_wins(built, tmp_path, monkeypatch):
    _, done = built
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    final = tmp_path / "tiny" / MICRO.key()
    real_build = train.build_tiny_model

    def build_while_another_process_finishes(recipe, out_dir):
        metrics = real_build(recipe, out_dir)
        shutil.copytree(done, final)  # the other process renames its build into place first
        return metrics

    monkeypatch.setattr(train, "build_tiny_model", build_while_another_process_finishes)
    other = (final / "tiny_recipe.json").read_text() if final.exists() else None
    assert other is None
    path = tiny_model_path(MICRO)
    assert path == final
    assert (path / "tiny_recipe.json").read_text() == (done / "tiny_recipe.json").read_text()
    assert _tmp_dirs(final.parent) == []


def test_force_rebuilds_and_replaces(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    recipe = dataclasses.replace(MICRO, seed=3)
    path = tiny_model_path(recipe)
    (path / "stale-extra-file").write_text("x")
    calls = []
    real_build = train.build_tiny_model
    monkeypatch.setattr(train, "build_tiny_model", lambda r, d: calls.append(d) or real_build(r, d))
    assert tiny_model_path(recipe) == path and calls == []
    assert tiny_model_path(recipe, force=True) == path
    assert len(calls) == 1
    assert not (path / "stale-extra-file").exists()
    assert cache._is_complete(path, recipe)
    assert _tmp_dirs(path.parent) == []


def test_training_rows_leave_out_val_and_test_questions():
    recipe = TinyRecipe()
    rows = data.training_rows(recipe)
    splits = synthetic_splits(recipe.n_train, recipe.n_test, seed=recipe.data_seed)
    val_idx = holdout_indices(recipe.n_train, recipe.val_holdout, recipe.data_seed)
    held = {normalize_question(splits["train"][i]["question"]) for i in val_idx}
    held |= {normalize_question(r["question"]) for r in splits["test"]}
    assert len(rows) == recipe.n_train - recipe.val_holdout
    assert not held & {normalize_question(r["question"]) for r in rows}


def test_packed_rows_are_few_shot_prompts_with_loss_on_solutions(built):
    from transformers import AutoTokenizer

    _, path = built
    tok = AutoTokenizer.from_pretrained(path)
    preset = get_preset("gsm8k")
    rows = data.training_rows(MICRO)
    examples = data._encode_examples(tok, rows)
    sep = data._separator_ids(tok)
    packed = data.pack_rows(examples, sep, tok.eos_token_id, 1000, seed=0, problems=(0, 0, 1))
    ids, kinds = next(packed)
    assert len(ids) == len(kinds) <= 1000 and ids[-1] == tok.eos_token_id
    text = tok.decode(ids[:-1])
    by_question = {r["question"]: r for r in rows}
    questions = [q.split("\nAnswer:")[0] for q in text.split("Question: ")[1:]]
    assert len(questions) == 3
    shots = [by_question[q] for q in questions]
    # Exactly what the gsm8k preset renders for the last problem after two exemplars ...
    assert text == preset.render(shots[2]["question"], shots[:2]) + preset.continuation(
        shots[2]["answer"]
    )
    # ... and it tokenizes the same way as a whole.
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[:-1]
    solutions = tok.decode([i for i, k in zip(ids, kinds, strict=True) if k == data.SOLUTION])
    assert solutions == "".join(preset.continuation(r["answer"]) for r in shots) + "</s>"
    assert data.QUESTION in kinds and kinds[0] == 0


def test_drills_target_the_results_of_training_notes(built):
    from transformers import AutoTokenizer

    _, path = built
    tok = AutoTokenizer.from_pretrained(path)
    drills = data._encode_drills(tok, data.training_rows(MICRO))
    ids, kinds = next(data.drill_rows(drills, 64, seed=0))
    assert len(ids) <= 64
    text = tok.decode(ids)
    assert text.startswith(" <<") and text.endswith(">>")
    targets = tok.decode([i for i, k in zip(ids, kinds, strict=True) if k == data.SOLUTION])
    notes = text.split()
    assert targets == "".join(n.split("=")[1] for n in notes)


def test_model_name_tiny_resolves_to_the_cache(built, monkeypatch):
    home, path = built
    monkeypatch.setattr(cache, "tiny_model_path", lambda recipe=None, force=False: path)
    assert resolve_model_name("tiny") == str(path)
    assert resolve_model_name("some/model") == "some/model"


def test_command_line_builds_prints_the_path_and_scores(built, monkeypatch, capsys):
    home, path = built
    monkeypatch.setenv("STEERLIGHT_HOME", str(home))
    monkeypatch.setattr(train, "build_tiny_model", lambda *a: pytest.fail("rebuilt"))
    argv = []
    for f in dataclasses.fields(TinyRecipe):
        argv += [f"--recipe.{f.name}", json.dumps(getattr(MICRO, f.name))]
    tiny_cli.main([*argv, "--eval", "3", "--max-new-tokens", "8"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(path)
    assert out[1].startswith("accuracy (0-shot, strict, 3 test questions): ")
    with pytest.raises(SystemExit):
        tiny_cli.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--force" in help_text
    assert "Seed of the weight initialisation" in help_text  # field docstrings are the help


def test_importing_the_package_stays_cheap():
    # `steerlight.tiny` is imported to resolve the model name `tiny`: it must not pull in
    # torch, Lightning or transformers (only a build or an evaluation needs them), nor the
    # model loader (which callers import after resolving the name: no import cycle).
    code = (
        "import sys, steerlight.tiny, steerlight.tiny.__main__\n"
        "heavy = {'torch', 'lightning', 'transformers', 'steerlight.model.loading'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_build_that_fails_before_training_restores_the_thread_count(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no batches")

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path))
    monkeypatch.setattr(train, "PackedBatches", broken)
    threads = torch.get_num_threads()
    torch.set_num_threads(train.BUILD_THREADS + 1)  # a count the build does not use
    try:
        with pytest.raises(RuntimeError, match="no batches"):
            tiny_model_path(dataclasses.replace(MICRO, seed=5))
        assert torch.get_num_threads() == train.BUILD_THREADS + 1
    finally:
        torch.set_num_threads(threads)

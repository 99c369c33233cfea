"""SteeredLM end to end on a tiny random Llama: fit, checkpoints, CAA by hand, the CLI."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from steerlight.checkpoint import SteeringCheckpoint
from steerlight.data.datamodule import GSM8KDataModule
from steerlight.errors import SteerlightError
from steerlight.module import SteeredLM

ROOT = Path(__file__).resolve().parents[1]


def model_dir(tiny_random_root: Path, arch: str, dest: Path) -> Path:
    """A folder holding both a tiny random model and its tokenizer, like a Hub model id."""
    shutil.copytree(tiny_random_root / arch, dest)
    for f in (tiny_random_root / "tokenizer").iterdir():
        shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture(scope="module")
def llama(tiny_llama_dir) -> Path:
    return tiny_llama_dir


def datamodule(path: Path, **kw) -> GSM8KDataModule:
    args = dict(
        source="synthetic",
        tokenizer=str(path),
        synthetic_train_size=80,
        synthetic_test_size=12,
        val_size=8,
        n_shots=0,
        batch_size=4,
        limit_train=12,
    )
    return GSM8KDataModule(**{**args, **kw})


def steered(path: Path, tmp_path: Path, **kw) -> SteeredLM:
    args = dict(model_name_or_path=str(path), layer=1, alpha=3.0, generation={"max_new_tokens": 6})
    return SteeredLM(**{**args, "cache_dir": str(tmp_path / "cache"), **kw})


def trainer(tmp_path: Path, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SteeringCheckpoint()],
        **kw,
    )


def completions(module: SteeredLM, stage: str = "val") -> list[str]:
    return [s["completion"] for s in module.samples[stage]]


def test_fit_checkpoint_roundtrip(llama, tmp_path):
    module = steered(llama, tmp_path)
    fit = trainer(tmp_path)
    fit.fit(module, datamodule(llama))
    config = module.model.config
    n_layers, hidden = config.num_hidden_layers, config.hidden_size
    assert module.steering["vectors"].shape == (n_layers, hidden)
    assert {f"probe_auc/layer_{i:02d}" for i in range(n_layers)} <= set(fit.callback_metrics)
    ckpt = Path(fit.checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    assert ckpt.stat().st_size < 50_000, "a checkpoint must not hold the base weights"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["state_dict"] == {}
    assert saved["base_model"]["weights_fingerprint"] == module.fingerprint

    again = steered(llama, tmp_path)
    result = trainer(tmp_path, logger=False).validate(again, datamodule(llama), ckpt_path=ckpt)
    assert result[0]["val/acc"] == fit.callback_metrics["val/acc"].item()
    assert completions(again) == completions(module)
    assert torch.equal(again.steering["vectors"], module.steering["vectors"])


def test_checkpoint_from_another_model_is_refused(llama, tiny_random_root, tmp_path):
    module = steered(llama, tmp_path)
    fit = trainer(tmp_path)
    fit.fit(module, datamodule(llama))
    other = model_dir(tiny_random_root, "llama", tmp_path / "other")
    from random_models import build_tiny_model

    build_tiny_model("llama", other, seed=1)  # same architecture, other weights
    with pytest.raises(SteerlightError, match="checkpoint was fitted on"):
        trainer(tmp_path, logger=False).validate(
            steered(other, tmp_path),
            datamodule(other),
            ckpt_path=fit.checkpoint_callback.best_model_path,
        )


def test_a_checkpoint_write_killed_halfway_leaves_the_previous_file(llama, tmp_path, monkeypatch):
    import lightning.fabric.plugins.io.torch_io as torch_io

    trainer(tmp_path, logger=False).fit(steered(llama, tmp_path), datamodule(llama))
    folder = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert "last.ckpt" in before

    def dies_halfway(checkpoint, path):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch_io, "_atomic_save", dies_halfway)
    with pytest.raises(RuntimeError, match="killed while writing"):
        trainer(tmp_path, logger=False).fit(steered(llama, tmp_path, alpha=1.0), datamodule(llama))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, "no file touched or left"


def test_alpha_zero_is_the_unsteered_model(llama, tmp_path):
    dm = datamodule(llama)
    runs = {}
    for name, kw in {
        "none": {"method": "none"},
        "zero": {"alpha": 0.0},
        "on": {"alpha": 8.0},
    }.items():
        module = steered(llama, tmp_path, log_samples=100, **kw)
        trainer(tmp_path, logger=False).fit(module, dm)
        runs[name] = completions(module)
    assert runs["zero"] == runs["none"]
    assert runs["on"] != runs["none"]


def test_a_val_step_decodes_like_padded_batches(llama, tmp_path):
    """A val step holds several generation batches, decoded `batch_size` rows at a time with
    row refill: its completions are those of `generate` on each batch, steered or not."""
    from steerlight.model.generation import generate, split_rows
    from steerlight.steering.hooks import steer

    dm = datamodule(llama, val_size=10, batch_size=3)  # 4 batches in one step
    for kw in ({"method": "none"}, {"alpha": 8.0}):
        module = steered(llama, tmp_path, log_samples=100, **kw)
        trainer(tmp_path, logger=False).fit(module, dm)
        (step,) = list(dm.val_dataloader())
        assert step["slots"] == 3 and len(step["ids"]) == 10
        want = []
        for ids, mask in split_rows(step["input_ids"], step["attention_mask"], 3):
            alpha = module.hparams.alpha if module.steers else 0.0
            vector = module.steering_vector()
            with steer(module.model, module.layer, vector, alpha, prompt_len=ids.shape[1]):
                args = (module.model, module.tokenizer, ids, mask, module.settings)
                want += generate(*args, module.preset.stop).texts
        assert completions(module) == want, kw


def test_caa_vector_equals_hand_computed_mean_difference(llama, tmp_path):
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerlight.steering.caa import corrupt_solution

    dm = datamodule(llama, limit_train=5)
    module = steered(llama, tmp_path, read_position="mean")
    trainer(tmp_path, logger=False).fit(module, dm)

    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    tok = AutoTokenizer.from_pretrained(llama)
    preset = dm.preset
    diffs = []
    for ex in dm.splits["train"]:
        bad = corrupt_solution(ex["answer"], random.Random(f"0:{ex['id']}"))
        reads = []
        for answer in (ex["answer"], bad):
            ids = tok(ex["prompt"] + preset.continuation(answer), return_tensors="pt")
            with torch.no_grad():
                hs = model(**ids, output_hidden_states=True).hidden_states
            start = len(ex["input_ids"])
            reads.append(torch.stack([h[0, start:].mean(0) for h in hs[1:]]))
        diffs.append(reads[0] - reads[1])
    expected = torch.stack(diffs).mean(0)
    # every layer but the last, whose hidden_states entry has the final norm applied
    torch.testing.assert_close(module.steering["vectors"][:-1], expected[:-1], atol=1e-4, rtol=1e-3)


# -- the CLI -------------------------------------------------------------------------------------


def write_config(path: Path, model: Path, tmp_path: Path) -> Path:
    path.write_text(
        f"""
trainer:
  accelerator: cpu
  default_root_dir: {tmp_path}
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {{save_dir: {tmp_path}/logs, name: cli, default_hp_metric: false}}
model:
  model_name_or_path: {model}
  layer: 1
  alpha: 2.0
  generation: {{max_new_tokens: 5}}
  cache_dir: {tmp_path}/cache
data:
  source: synthetic
  synthetic_train_size: 60
  synthetic_test_size: 6
  val_size: 6
  n_shots: 0
  limit_train: 8
  batch_size: 3
"""
    )
    return path


def test_cli_fit_validate_test(llama, tmp_path, caplog):
    from steerlight.cli import cli_main

    config = write_config(tmp_path / "c.yaml", llama, tmp_path)
    with caplog.at_level(logging.INFO, logger="steerlight.progress"):
        fit = cli_main(["fit", "--config", str(config)])
    # plain progress lines (output is not a terminal here): the train pass and the val pass
    lines = [r.getMessage() for r in caplog.records if r.name == "steerlight.progress"]
    assert any(line.startswith("train activations: 8/8 questions (100%)") for line in lines)
    val = [line for line in lines if line.startswith("val: ")]
    assert val and "questions/s" in val[-1] and "acc " in val[-1], lines
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    assert Path(ckpt).is_file()
    assert (Path(fit.trainer.log_dir) / "config.yaml").is_file(), "the run's config is saved"
    assert_tensorboard_review(Path(fit.trainer.log_dir))
    val = cli_main(["validate", "--config", str(config), "--ckpt_path", ckpt])
    assert val.trainer.callback_metrics["val/acc"] == fit.trainer.callback_metrics["val/acc"]
    test = cli_main(["test", "--config", str(config), "--ckpt_path", ckpt])
    assert "test/acc_strict" in test.trainer.callback_metrics
    columns = hparams_experiment(Path(test.trainer.log_dir))
    assert {"test/acc", "test/acc_flexible"} <= columns["metrics"], columns
    assert len(test.model.samples["test"]) == 6
    # every predictions row counts its generated tokens against the cap, per model
    records, cap = test.model.records, test.model.metrics["test"].cap
    for r in records:
        for name in ("baseline", "steered"):
            assert 0 <= r[f"{name}_tokens"] <= cap
            assert r[f"{name}_at_cap"] == (r[f"{name}_tokens"] >= cap)
    # A flag beats the checkpoint's saved argument; the other saved arguments still apply.
    flagged = cli_main(
        ["test", "--config", str(config), "--ckpt_path", ckpt, "--model.alpha", "0.5"]
    )
    assert flagged.model.hparams.alpha == 0.5 and flagged.model.hparams.layer == 1
    # The saved arguments rank above config files: another file's layer and alpha lose to
    # the checkpoint's, and a flag in jsonargparse's `=` spelling still wins.
    other = tmp_path / "other.yaml"
    other.write_text("model:\n  layer: 0\n  alpha: 1.0\n")
    ranked = cli_main(["test", "--config", str(config), "--config", str(other),
                       "--ckpt_path", ckpt, "--model.alpha=0.25"])  # fmt: skip
    assert ranked.model.hparams.layer == 1 and ranked.model.hparams.alpha == 0.25


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    from steerlight.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model_name_or_path" in printed and "source" in printed


def assert_tensorboard_review(log_dir: Path) -> None:
    """What the README tells a user to look at is really in the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"val/acc", "val/acc_strict", "val/acc_flexible", "probe_auc/layer_00"} <= set(
        tags["scalars"]
    )
    assert "val/samples/text_summary" in tags["tensors"]
    table = acc.Tensors("val/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| question | completion | extracted | gold | correct |")
    assert "probes/auc_per_layer" in tags["images"]
    columns = hparams_experiment(log_dir)
    assert {"val/acc", "val/acc_flexible"} <= columns["metrics"], "real metric columns"
    names = columns["hparams"]
    assert names[:3] == ["1 method", "2 layer", "3 strength"], "what is steered comes first"
    assert not {"_instantiator", "cache_dir", "log_samples"} & set(names), names
    assert not [n for n in names if n.startswith("dac.")], "a CAA run leaves DAC's blank"
    assert "generation.max_new_tokens" in names


def hparams_experiment(log_dir: Path) -> dict:
    """The HPARAMS tab of a run: its hyperparameter names (in order) and metric columns."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    return {
        "metrics": {m.name.tag for m in experiment.experiment.metric_infos},
        "hparams": [h.name for h in experiment.experiment.hparam_infos],
    }


def test_dac_through_the_module(llama, tmp_path):
    dm = datamodule(llama)
    runs = {}
    for name, kw in {
        "none": {"method": "none"},
        "dac0": {"method": "dac", "dac": {"alpha_max": 0.0}},
        "dac": {"method": "dac", "dac": {"alpha_max": 8.0}},
    }.items():
        module = steered(llama, tmp_path, log_samples=100, **kw)
        trainer(tmp_path, logger=False).fit(module, dm)
        runs[name] = completions(module)
    assert runs["dac0"] == runs["none"]
    assert runs["dac"] != runs["none"]


def test_dac_in_context_vectors(llama, tmp_path):
    dac = {"vectors": "icl", "steps": 3, "alpha_max": 8.0}
    module = steered(llama, tmp_path, method="dac", dac=dac)
    trainer(tmp_path, logger=False).fit(module, datamodule(llama, n_shots=1, limit_train=4))
    vectors = module.steering["icl_vectors"]
    config = module.model.config
    assert vectors.shape == (4, config.num_hidden_layers, config.hidden_size)
    assert module.steering_vector("icl_vectors").shape == (4, config.hidden_size)
    with pytest.raises(SteerlightError, match="needs in-context exemplars"):
        trainer(tmp_path, logger=False).fit(
            steered(llama, tmp_path, method="dac", dac={"vectors": "icl", "steps": 2}),
            datamodule(llama, n_shots=0),
        )


def test_on_policy_pairs_label_the_models_own_generations(llama, tmp_path):
    # A random model never solves a problem, so every on-policy example is labelled bad:
    # steerlight must say so instead of fitting a vector from one class.
    module = steered(llama, tmp_path, pairs="on_policy")
    with pytest.raises(SteerlightError, match="train examples are all bad"):
        trainer(tmp_path, logger=False).fit(module, datamodule(llama, limit_train=4))
    assert module.generated_tokens > 0, "the labels come from the model's own generations"


def test_progress_counts_questions_as_their_rows_finish(llama, tmp_path, caplog):
    """A val or test step of several batches reports questions as their rows finish, with an
    ETA, not only when the step ends; the module's hook is gone afterwards."""
    from steerlight.progress import PassProgress

    dm = datamodule(llama, val_size=10, batch_size=2)  # one step of 10 (val) and 12 (test)
    module = steered(llama, tmp_path)
    run = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),  # where the test's verdict files go
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PassProgress(fraction=0.05)],
    )
    with caplog.at_level(logging.INFO, logger="steerlight.progress"):
        run.fit(module, dm)
        run.test(module, dm)
    for what, total in (("val", 10), ("test (steered and baseline)", 12)):
        assert len(list(getattr(dm, f"{what.split()[0]}_dataloader")())) == 1, "one step"
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(what + ":")]
        done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
        assert done == sorted(done) and done[-1] == total and len(done) > 2, lines
        assert "ETA" in lines[0]
    assert module.on_rows_done is None


def test_batch_size_auto_is_measured_where_the_model_runs(llama, tmp_path, monkeypatch, caplog):
    """`data.batch_size: auto`: measured once the model is loaded (before any loader), on
    sequences as long as the longest prompt plus the new tokens, at most the questions."""
    from steerlight.model import batch_size

    monkeypatch.setenv("STEERLIGHT_HOME", str(tmp_path / "home"))
    asked = []
    measure = batch_size._decode_rate

    def spy(model, rows, length, timer):
        asked.append((rows, length))
        return measure(model, rows, length, timer)

    monkeypatch.setattr(batch_size, "_decode_rate", spy)
    caplog.set_level(logging.INFO, logger="steerlight.model.batch_size")
    dm = datamodule(llama, batch_size="auto")
    trainer(tmp_path, logger=False).fit(steered(llama, tmp_path), dm)
    assert dm.batch_size in {rows for rows, _ in asked} and dm.batch_size <= 12  # test questions
    (step,) = list(dm.val_dataloader())
    assert step["slots"] == dm.batch_size
    assert {length for _, length in asked} == {dm.longest_prompt() + 6}
    assert f"data.batch_size auto: {dm.batch_size}" in caplog.text


def test_batch_size_must_be_a_count_or_auto(llama):
    for bad in (0, "many"):
        with pytest.raises(SteerlightError, match=f"data.batch_size={bad!r} is invalid"):
            datamodule(llama, batch_size=bad)

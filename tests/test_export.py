"""`steerlight export`: each format round-trips on the embedded tiny model.

One checkpoint is fitted (CAA, layer 2, positions all, mean_norm); the other cases edit its
hyperparameters (method, layer, positions, normalization), which is all an export reads. The
reference is steerlight's own steered generation of that checkpoint (`SteeredLM` restored from
it, `steered_generate`); each target must generate the same greedy tokens.
"""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, need_consumer, subprocess_env
from random_models import ARCHS, NUM_LAYERS

from steerlight.errors import SteerlightError
from steerlight.export import export
from steerlight.export.command import main as export_main
from steerlight.model.generation import GenerationSettings, generate
from steerlight.module import SteeredLM
from steerlight.steering.apply import steered_generate

PROMPTS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    "Question: A box holds 12 pens. Ann uses 5 of them. How many pens are left?\nAnswer:",
    "Question: Sam reads 6 pages a day for 4 days. How many pages does he read?\nAnswer:",
]
NEW_TOKENS = 12
ALPHA = 1.5


@pytest.fixture(scope="module")
def fitted(tiny_model, tmp_path_factory, single_torch_thread) -> Path:
    """A CAA checkpoint on the tiny model: layer 2, alpha 1.5, positions all, mean_norm."""
    from steerlight.cli import cli_main

    tmp = tmp_path_factory.mktemp("export_fit")
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "enable_progress_bar": False,
            "logger": False,
            "default_root_dir": str(tmp / "runs"),
        },
        "model": {
            "model_name_or_path": str(tiny_model),
            "method": "caa",
            "layer": 2,
            "alpha": ALPHA,
            "positions": "all",
            "normalization": "mean_norm",
            "cache_dir": str(tmp / "cache"),
            "generation": {"max_new_tokens": 4},
        },
        "data": {
            "source": "synthetic",
            "synthetic_train_size": 60,
            "synthetic_test_size": 4,
            "val_size": 8,
            "n_shots": 0,
            "limit_train": 16,
            "limit_val": 2,
            "batch_size": 8,
        },
    }
    path = tmp / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    cli_main(["fit", "--config", str(path)])
    (ckpt,) = (tmp / "runs" / "checkpoints").glob("last.ckpt")
    return ckpt


def variant(ckpt: Path, out: Path, steering: dict | None = None, **hparams) -> Path:
    """A copy of `ckpt` with some hyperparameters (and steering tensors) replaced."""
    data = torch.load(ckpt, weights_only=True)
    data = copy.deepcopy(data)
    for key, value in hparams.items():
        if key.startswith("dac_"):
            data["hyper_parameters"]["dac"][key[4:]] = value
        else:
            data["hyper_parameters"][key] = value
    data["steering"].update(steering or {})
    torch.save(data, out)
    return out


@pytest.fixture(scope="module")
def reference(fitted):
    """steerlight's model restored from the checkpoint, its prompts and steered/plain tokens."""
    ckpt = torch.load(fitted, weights_only=True)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "_instantiator"}
    module = SteeredLM(**hp)
    module.on_load_checkpoint(ckpt)
    tok = module.tokenizer
    batch = tok(PROMPTS, return_tensors="pt", padding=True)  # left-padded, as steerlight batches
    ids, mask = batch["input_ids"], batch["attention_mask"]
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    args = (module.model, tok, ids, mask)
    steered = steered_generate(
        *args, module.steering_config(), module.steering_vector(), settings, ()
    ).tokens
    plain = generate(*args, settings).tokens
    assert not torch.equal(steered, plain), "the steering must change the greedy tokens"
    return module, ids, mask, settings, steered


def rows(tokens: torch.Tensor, pad: int) -> list[list[int]]:
    """Each row's tokens without the trailing pads of a finished row."""
    out = []
    for row in tokens.tolist():
        while row and row[-1] == pad:
            row.pop()
        out.append(row)
    return out


def test_lm_eval_steered_model_generates_steerlights_tokens(fitted, reference, tmp_path):
    SteeredModel = need_consumer("lm_eval.models.hf_steered").SteeredModel

    module, ids, mask, settings, steered = reference
    done = export(fitted, "lm-eval", tmp_path / "steer.pt")

    steer = torch.load(done.path, weights_only=True)
    assert list(steer) == ["layers.2"], "a hookpoint inside model.base_model"
    entry = steer["layers.2"]
    assert entry["action"] == "add" and entry["bias"] is None and entry["head_index"] is None
    act_norm = float(torch.load(fitted, weights_only=True)["steering"]["act_norm"][2])
    assert entry["steering_coefficient"] == pytest.approx(ALPHA * act_norm, rel=1e-6)
    torch.testing.assert_close(entry["steering_vector"].norm(), torch.tensor(1.0))
    torch.testing.assert_close(
        entry["steering_vector"] * entry["steering_coefficient"],
        ALPHA * module.steering_vector(),
    )
    assert done.warnings == ()
    assert done.usage.startswith("lm_eval --model steered --model_args pretrained=")
    assert f"steer_path={done.path.resolve()}" in done.usage and "--tasks gsm8k" in done.usage

    lm = SteeredModel(
        pretrained=done.state.model_path,
        steer_path=str(done.path),
        device="cpu",
        batch_size=1,
        dtype=done.state.dtype,
    )
    pad = module.tokenizer.pad_token_id
    expected = rows(steered, pad)
    assert all(len(row) >= 4 for row in expected)
    for i in range(len(PROMPTS)):  # one row at a time: lm-eval passes no attention mask
        context = ids[i : i + 1, mask[i].bool()]
        out = lm._model_generate(  # the steered generation `generate_until` calls
            context,
            max_length=context.shape[1] + NEW_TOKENS,
            stop=[],
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
        )
        assert rows(out[:, context.shape[1] :], pad) == [expected[i]]

    # And through the request API `lm_eval --tasks gsm8k` uses, with GSM8K's stop strings.
    Instance = need_consumer("lm_eval.api.instance").Instance

    stop = list(module.preset.stop)
    requests = [
        Instance("generate_until", {}, (p, {"until": stop, "do_sample": False}), idx=0)
        for p in PROMPTS
    ]
    texts = lm.generate_until(requests, disable_tqdm=True)
    settings = GenerationSettings(max_new_tokens=48)
    for prompt, text in zip(PROMPTS, texts, strict=True):
        batch = module.tokenizer([prompt], return_tensors="pt")
        gen = steered_generate(
            module.model,
            module.tokenizer,
            batch["input_ids"],
            batch["attention_mask"],
            module.steering_config(),
            module.steering_vector(),
            settings,
            stop,
        )
        (ours,) = gen.texts
        if len(rows(gen.tokens, pad)[0]) < settings.max_new_tokens:  # stopped by itself
            assert text == ours
        else:  # lm-eval decodes up to the model's own max_new_tokens (256)
            assert text.startswith(ours) and len(ours) > 10


def test_steering_vectors_apply_generates_steerlights_tokens(fitted, reference, tmp_path):
    SteeringVector = need_consumer("steering_vectors").SteeringVector
    matcher = need_consumer("steering_vectors.layer_matching").guess_decoder_block_matcher

    module, ids, mask, settings, steered = reference
    done = export(fitted, "steering-vectors", tmp_path / "sv.pt")

    saved = torch.load(done.path, weights_only=True)
    assert saved["layer_type"] == "decoder_block"
    assert saved["layer_config"] == {"decoder_block": "model.layers.{num}"}
    assert saved["layer_config"]["decoder_block"] == matcher(module.model)
    assert list(saved["layer_activations"]) == [2]
    torch.testing.assert_close(saved["layer_activations"][2], ALPHA * module.steering_vector())
    assert saved["steerlight"]["coefficient"] == done.state.coefficient

    vector = SteeringVector(saved["layer_activations"], saved["layer_type"])
    with vector.apply(module.model, layer_config=saved["layer_config"]):
        tokens = generate(module.model, module.tokenizer, ids, mask, settings).tokens
    assert torch.equal(tokens, steered)


def llama_cpp_control_vector(path: Path, n_layer: int) -> dict[int, torch.Tensor]:
    """The per-layer additions llama.cpp makes of a control-vector file at strength 1.

    As `common_control_vector_load_one` and `llama_adapter_cvec::apply` do: `direction.N`
    (N >= 1) is stored at row N - 1 and becomes the tensor of layer N, added to the output
    (`l_out`) of 0-based decoder layer N; there is never one for layer 0.
    """
    import gguf

    reader = gguf.GGUFReader(path)
    n_embd, data = None, []
    for tensor in reader.tensors:
        kind, _, index = tensor.name.partition(".")
        assert kind == "direction" and int(index) >= 1
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and len(tensor.shape) == 1
        n_embd = int(tensor.n_elements)
        need = n_embd * int(index)
        data += [0.0] * max(0, need - len(data))
        start = n_embd * (int(index) - 1)
        for j, value in enumerate(tensor.data.tolist()):
            data[start + j] += value
    flat = torch.tensor(data, dtype=torch.float32)
    return {
        il: flat[n_embd * (il - 1) : n_embd * il]
        for il in range(1, n_layer)
        if n_embd * il <= len(data)
    }


def test_gguf_control_vector_reads_back_at_the_layer_steerlight_steers(fitted, reference, tmp_path):
    import gguf

    module, ids, mask, settings, steered = reference
    done = export(fitted, "gguf", tmp_path / "cv.gguf")

    reader = gguf.GGUFReader(done.path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama"
    assert fields["controlvector.layer_count"] == 1
    assert fields["steerlight.layer"] == 2
    (tensor,) = reader.tensors
    assert tensor.name == "direction.2"
    expected = (done.state.direction * done.state.coefficient).numpy()
    assert (tensor.data == expected).all()
    torch.testing.assert_close(
        torch.from_numpy(tensor.data.copy()), ALPHA * module.steering_vector()
    )

    layers = module.model.model.layers
    additions = llama_cpp_control_vector(done.path, len(layers))
    assert {il for il, v in additions.items() if v.any()} == {2}, "direction.2: layer 2's output"
    handles = [
        layers[il].register_forward_hook(
            lambda m, a, out, v=v: (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v
        )
        for il, v in additions.items()
    ]
    try:
        tokens = generate(module.model, module.tokenizer, ids, mask, settings).tokens
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(tokens, steered)


@pytest.mark.parametrize(
    ("normalization", "scale"),
    [("mean_norm", "act_norm"), ("unit", "one"), ("none", "raw_norm")],
)
def test_the_coefficient_is_what_steerlight_applies(fitted, tmp_path, normalization, scale):
    ckpt = variant(fitted, tmp_path / "n.ckpt", normalization=normalization, alpha=-0.75)
    state = export(ckpt, "steering-vectors", tmp_path / "sv.pt").state
    steering = torch.load(fitted, weights_only=True)["steering"]
    raw = steering["vectors"][2]
    s = {"act_norm": steering["act_norm"][2], "one": 1.0, "raw_norm": raw.norm()}[scale]
    assert state.coefficient == pytest.approx(-0.75 * float(s), rel=1e-6)
    from steerlight.steering.caa import scale_vectors

    applied = -0.75 * scale_vectors(raw, normalization, steering["act_norm"][2])
    torch.testing.assert_close(state.vector, applied)


def test_layer_auto_exports_the_best_probes_layer(fitted, tmp_path):
    auc = torch.tensor([0.5, 0.6, 0.7, 0.9])
    ckpt = variant(fitted, tmp_path / "auto.ckpt", {"probe_auc": auc}, layer="auto")
    done = export(ckpt, "lm-eval", tmp_path / "steer.pt")
    assert done.state.layer == 3
    assert list(torch.load(done.path, weights_only=True)) == ["layers.3"]
    negative = variant(fitted, tmp_path / "neg.ckpt", layer=-1)
    assert export(negative, "gguf", tmp_path / "cv.gguf").state.layer == 3


def test_dac_exports_alpha_max_and_says_what_is_lost(fitted, tmp_path, caplog, capsys, monkeypatch):
    ckpt = variant(
        fitted, tmp_path / "dac.ckpt", method="dac", dac_alpha_max=3.0, positions="generated"
    )
    # as in a fresh notebook: no command line in this process has shown steerlight's log
    monkeypatch.setattr(logging.getLogger("steerlight"), "handlers", [])
    with caplog.at_level("WARNING", logger="steerlight"):
        done = export(ckpt, "gguf", tmp_path / "cv.gguf")
    act_norm = float(torch.load(fitted, weights_only=True)["steering"]["act_norm"][2])
    assert done.state.coefficient == pytest.approx(3.0 * act_norm, rel=1e-6)
    dac_note, positions_note = done.warnings
    assert "alpha_max = 3" in dac_note and "per-token strength is lost" in dac_note
    assert "'generated'" in positions_note and "every position" in positions_note
    assert "a llama.cpp control vector adds" in positions_note
    assert [r.getMessage() for r in caplog.records] == [f"warning: {w}" for w in done.warnings]
    assert capsys.readouterr().out == "", "the API logs; it prints nothing"


def test_dac_icl_vectors_export_their_steady_state(fitted, tmp_path):
    icl = torch.randn(9, 4, 128)  # (steps + 1, layers, hidden)
    ckpt = variant(
        fitted, tmp_path / "icl.ckpt", {"icl_vectors": icl}, method="dac", dac_vectors="icl"
    )
    done = export(ckpt, "steering-vectors", tmp_path / "sv.pt")
    torch.testing.assert_close(done.state.direction, icl[-1, 2] / icl[-1, 2].norm())
    assert any("per-step vectors are lost" in w for w in done.warnings)


def test_best_and_last_are_found_under_root(fitted, tmp_path):
    study = tmp_path / "logs" / "study"
    study.mkdir(parents=True)
    (study / "best.ckpt").write_bytes(fitted.read_bytes())
    done = export("best", "lm-eval", tmp_path / "a.pt", study_name="study", root=tmp_path / "logs")
    assert done.state.checkpoint == (study / "best.ckpt").resolve()
    done = export("last", "lm-eval", tmp_path / "b.pt", root=fitted.parents[1])
    assert done.state.checkpoint == fitted.resolve()
    with pytest.raises(SteerlightError, match="has no best.ckpt"):
        export("best", "gguf", tmp_path / "c.gguf", study_name="nope", root=tmp_path / "logs")


def test_an_unsteered_best_exports_the_best_steered_trial(fitted, tmp_path, caplog):
    study = tmp_path / "logs" / "study"
    study.mkdir(parents=True)
    variant(fitted, study / "best.ckpt", alpha=0.0)  # the baseline won on val
    best = {"study": "study", "trial": 0, "val_acc": 0.4, "params": {}, "steers": False}
    (study / "best.json").write_text(json.dumps(best))
    root = tmp_path / "logs"
    nothing = "nothing to export: .* and none completed .* --model.alpha 1"
    with pytest.raises(SteerlightError, match=nothing):
        export("best", "gguf", tmp_path / "a.gguf", study_name="study", root=root)
    steered = {"trial": 3, "val_acc": 0.38, "describe": "caa at layer 2, alpha 1.5"}
    (study / "best_steered.json").write_text(json.dumps({**steered, "checkpoint": str(fitted)}))
    with caplog.at_level(logging.WARNING, logger="steerlight"):
        done = export("best", "gguf", tmp_path / "a.gguf", study_name="study", root=root)
    assert done.state.checkpoint == fitted.resolve() and done.state.layer == 2
    assert "does not steer: no steered trial beat the unsteered baseline on val" in caplog.text
    assert "best steered trial is 3 (val/acc 0.3800, caa at layer 2, alpha 1.5)" in caplog.text


@pytest.mark.parametrize(
    ("change", "fmt", "out", "message"),
    [
        ({"method": "none"}, "lm-eval", "s.pt", r"does not steer \(method: none\)"),
        ({"alpha": 0.0}, "gguf", "c.gguf", r"does not steer \(alpha: 0\)"),
        ({"layer": 0}, "gguf", "c.gguf", "layer 0, which --format gguf cannot hold: .*direction.0"),
        ({}, "lm-eval", "steer.json", "reads only .pt or .pth"),
        ({}, "onnx", "x.bin", "unknown format 'onnx': choose one of lm-eval, steering-vectors"),
        ({}, "lm-eval", "a_file/steer.pt", "--out: cannot write in"),
    ],
)
def test_one_line_errors(fitted, tmp_path, change, fmt, out, message):
    (tmp_path / "a_file").write_text("not a folder")
    ckpt = variant(fitted, tmp_path / "v.ckpt", **change)
    with pytest.raises(SteerlightError, match=message) as err:
        export(ckpt, fmt, tmp_path / out)
    assert "\n" not in str(err.value)
    assert not (tmp_path / out).exists()


def test_a_missing_gguf_package_names_the_extra(fitted, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    logger = logging.getLogger("steerlight")  # the command shows the log: undone afterwards
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "level", logger.level)
    with pytest.raises(SystemExit) as exit_:
        export_main(["--ckpt", str(fitted), "--format", "gguf", "--out", str(tmp_path / "c")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install -e ".[export]"' in err
    assert not (tmp_path / "c").exists()


def test_the_command_line_writes_the_file_and_prints_the_lm_eval_command(fitted, tmp_path):
    out = tmp_path / "steer.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "steerlight", "export", "--ckpt", "last", "--format", "lm-eval"]
        + ["--out", str(out), "--root", str(fitted.parents[1])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(f"wrote {out} (lm-eval): caa on ")
    assert lines[-1].startswith("use it: lm_eval --model steered --model_args pretrained=")
    assert f",steer_path={out}" in lines[-1] and lines[-1].endswith("--tasks gsm8k")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_gets_names_its_loaders_resolve(arch, tmp_path):
    """lm-eval resolves the hookpoint in `model.base_model.named_modules()`; steering-vectors
    finds `layer_config`'s template in `model.named_modules()` (here from the config alone)."""
    import transformers
    from transformers import AutoModelForCausalLM

    from steerlight.export.state import model_structure

    matching = need_consumer("steering_vectors.layer_matching").collect_matching_layers

    name, kwargs, layers_key = ARCHS[arch]
    config = getattr(transformers, name)(**{layers_key: NUM_LAYERS[arch]}, **kwargs)
    config.save_pretrained(tmp_path)
    structure = model_structure(str(tmp_path), None, False)

    assert structure.num_layers == NUM_LAYERS[arch]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert structure.hidden_size == model.get_input_embeddings().embedding_dim
    base = dict(model.base_model.named_modules())
    for layer in range(structure.num_layers):
        assert structure.hookpoint(layer) in base
        assert (
            base[structure.hookpoint(layer)]
            is dict(model.named_modules())[structure.layer_name(layer)]
        )
    template = structure.layers_name + ".{num}"
    assert len(matching(model, template)) == structure.num_layers

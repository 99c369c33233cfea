"""Steering methods as values: the registry, and each method against an independent reference
(sklearn for the directions, naive formulas for ablation, gating and several layers)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from steerlight.errors import SteerlightError
from steerlight.model.generation import GenerationSettings, generate
from steerlight.steering import method as methods
from steerlight.steering.apply import SteeringConfig, steered_generate
from steerlight.steering.dac import DACSettings
from steerlight.steering.hooks import steer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = ["Question: How many cows does the farmer have now?", "Q: 3 + 2 =", "Tom reads", "A"]


def _pairs(n_pairs=40, layers=3, hidden=8, seed=0):
    """Activations (2P, L, H) alternating good, bad, with a shared shift and pair noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_pairs, layers, hidden, generator=g) * 2
    shift = torch.randn(layers, hidden, generator=g)
    noise = torch.randn(n_pairs, layers, hidden, generator=g) * 0.5
    pos, neg = base + shift / 2 + noise, base - shift / 2 - noise
    acts = torch.stack([pos, neg], 1).reshape(2 * n_pairs, layers, hidden)
    labels = torch.tensor([True, False] * n_pairs)
    return acts, labels


# ---- the registry ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToySettings:
    gain: float = 1.0


class Toy(methods.SteeringMethod):
    name = "toy"
    settings = ToySettings
    help = "a test's method"


@pytest.fixture
def toy():
    methods.register(Toy)
    yield
    methods.unregister("toy")


def test_a_registered_method_is_in_the_cli_choices_and_the_search_space(toy, capsys):
    from steerlight.cli import cli_main
    from steerlight.search.space import Space, searchable_names

    with pytest.raises(SystemExit):
        cli_main(args=["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "toy: a test's method" in help_text and "caa," in help_text
    assert "options.gain" in searchable_names()
    space = Space.from_dict(
        {"method": ["caa", "toy"], "when": {"toy": {"options.gain": {"low": 0.5, "high": 2.0}}}},
        "test",
    )
    assert "options.gain" in space.distributions(None)
    assert methods.check_options("toy", {"gain": 3.0}) == ToySettings(3.0)


def test_an_unregistered_method_is_one_line_naming_the_valid_ones():
    from steerlight.search.space import Space

    with pytest.raises(SteerlightError, match="'toy' is not a steering method; use one of .*caa"):
        Space.from_dict({"method": ["caa", "toy"]}, "test")
    with pytest.raises(SteerlightError, match="unknown field 'gain'"):
        methods.check_options("caa", {"gain": 1.0})
    with pytest.raises(SteerlightError, match="model.options for method pca: center"):
        methods.check_options("pca", {"center": "middle"})


def test_every_method_says_how_it_steers_and_exports():
    for name, m in methods.registry().items():
        assert m.name == name and m.kind in ("none", "additive", "projection", "gated", "dynamic")
        assert m.exports == (m.kind in ("additive", "dynamic")), name
        if not m.exports:
            assert name in m.refusal()


# ---- directions against sklearn -------------------------------------------------------------


@pytest.mark.parametrize("center", ["pca_diff", "pca_center"])
def test_pca_equals_sklearn(center):
    from sklearn.decomposition import PCA

    from steerlight.steering.pca import pca_directions

    acts, labels = _pairs()
    got = pca_directions(acts, labels, "corrupted", center)
    pos, neg = acts[0::2].double(), acts[1::2].double()
    for layer in range(acts.shape[1]):
        p, n = pos[:, layer], neg[:, layer]
        if center == "pca_diff":
            rows = (p - n).numpy()
        else:
            mid = (p + n) / 2
            rows = torch.cat([p - mid, n - mid]).numpy()
        want = torch.from_numpy(PCA(n_components=1).fit(rows).components_[0])
        if ((p - n) @ want > 0).double().mean() < 0.5:  # the majority vote, by hand
            want = -want
        torch.testing.assert_close(got[layer], want, atol=1e-6, rtol=0)


def test_pca_refuses_unpaired_activations():
    from steerlight.steering.pca import pca_directions

    acts, labels = _pairs()
    with pytest.raises(SteerlightError, match="use model.pairs: corrupted"):
        pca_directions(acts, labels, "on_policy", "pca_diff")


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_logistic_equals_sklearn(C):
    from sklearn.linear_model import LogisticRegression

    from steerlight.steering.logistic import logistic_weights, pair_centred

    acts, labels = _pairs(seed=1)
    rows, y = pair_centred(acts, labels, "corrupted")
    got = logistic_weights(rows, y, C)
    for layer in range(acts.shape[1]):
        reg = LogisticRegression(fit_intercept=False, C=C, tol=1e-10, max_iter=10_000)
        want = torch.from_numpy(reg.fit(rows[:, layer].numpy(), y.numpy()).coef_[0])
        torch.testing.assert_close(got[layer], want, atol=1e-4, rtol=1e-4)


def test_fitted_directions_are_unit_times_the_mean_difference_norm():
    acts, labels = _pairs(seed=2)
    diff_norm = (acts[0::2] - acts[1::2]).mean(0).norm(dim=-1)
    for name in ("pca", "logistic"):
        m = methods.get(name)
        key = m.fit_key({"options": {}})["direction"]
        v = m.direction(acts, labels, "corrupted", key)
        torch.testing.assert_close(v.norm(dim=-1), diff_norm.float())
        # signed so that positives project higher: along the mean difference, not against it
        cos = torch.nn.functional.cosine_similarity(v, (acts[0::2] - acts[1::2]).mean(0), -1)
        assert bool((cos > 0).all()), (name, cos)


# ---- generation: strength 0, ablation, gating, several layers -------------------------------


def _state(hidden, layers, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {
        "vectors": torch.randn(layers, hidden, generator=g),
        "act_norm": torch.rand(layers, generator=g) + 1,
        "probe_weight": torch.randn(layers, hidden, generator=g),
        "probe_bias": torch.randn(layers, generator=g) * 0.1,
        "probe_mean": torch.randn(layers, hidden, generator=g) * 0.1,
        "probe_std": torch.rand(layers, hidden, generator=g) + 0.5,
    }


@pytest.fixture
def llama(tiny_random_model, tiny_random_tokenizer):
    model = tiny_random_model("llama")
    enc = tiny_random_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    hidden = model.config.hidden_size
    return model, tiny_random_tokenizer, enc.input_ids, enc.attention_mask, hidden


def _config(method, layer, alpha, options=None, positions="prompt_end+generated"):
    opts = methods.get(method).options(options)
    return SteeringConfig(method, layer, alpha, positions, "unit", DACSettings(), opts)


SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.mark.parametrize("method", ["caa", "pca", "logistic", "ablation", "conditional"])
def test_strength_zero_gives_the_unsteered_tokens(method, llama):
    model, tok, ids, mask, hidden = llama
    state = _state(hidden, model.config.num_hidden_layers)
    want = generate(model, tok, ids, mask, SETTINGS)
    config = _config(method, 1, 0.0, {"threshold": 1.0})  # conditional: every row gated in
    assert not config.steers
    got = steered_generate(model, tok, ids, mask, config, None, SETTINGS, (), state=state)
    assert torch.equal(got.tokens, want.tokens)
    steering = _config(method, 1, 8.0, {"threshold": 1.0})
    moved = steered_generate(model, tok, ids, mask, steering, None, SETTINGS, (), state=state)
    assert not torch.equal(moved.tokens, want.tokens), "a strength of 8 changes nothing"


def _naive_hook(model, layer, edit):
    """A forward hook on `layer` applying `edit(h)` at every column (positions: all)."""

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = edit(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return model.model.layers[layer].register_forward_hook(hook)


@pytest.mark.parametrize("alpha", [1.0, 0.5, -2.0])
def test_ablation_equals_the_naive_projection(alpha, llama):
    model, tok, ids, mask, hidden = llama
    state = _state(hidden, model.config.num_hidden_layers)
    r = state["vectors"][1] / state["vectors"][1].norm()
    handle = _naive_hook(model, 1, lambda h: h - alpha * (h @ r)[..., None] * r)
    try:
        want = generate(model, tok, ids, mask, SETTINGS)
        logits_want = model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    config = _config("ablation", 1, alpha, positions="all")
    got = steered_generate(model, tok, ids, mask, config, None, SETTINGS, (), state=state)
    assert torch.equal(got.tokens, want.tokens)
    with steer(model, 1, r * 3, alpha, "all", project=True):  # r's length does not matter
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, logits_want)


def test_ablation_at_alpha_one_leaves_no_component_along_r(llama):
    from steerlight.steering.activations import read_layers

    model, _, ids, mask, hidden = llama
    r = torch.randn(hidden, generator=torch.Generator().manual_seed(5))
    with steer(model, 1, r, 1.0, "all", project=True), read_layers(model, [1], lambda h: h) as got:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    component = got[1] @ (r / r.norm())
    assert float(component[mask.bool()].abs().max()) < 1e-4


@pytest.mark.parametrize("threshold, steer_when", [(0.5, "below"), (0.5, "above"), (0.0, "above")])
def test_conditional_steers_exactly_the_rows_the_naive_gate_picks(threshold, steer_when, llama):
    from steerlight.steering.activations import read_activations

    model, tok, ids, mask, hidden = llama
    state = _state(hidden, model.config.num_hidden_layers, seed=7)
    layer, alpha = 1, 6.0
    # the naive gate: the all-layer reader, the probe formula written out
    h = read_activations(model, ids, mask, mask)[:, layer].double()
    z = (h - state["probe_mean"][layer]) / state["probe_std"][layer]
    p = torch.sigmoid(z @ state["probe_weight"][layer].double() + state["probe_bias"][layer])
    rows = p < threshold if steer_when == "below" else p > threshold
    options = {"threshold": threshold, "steer_when": steer_when}
    config = _config("conditional", layer, alpha, options)
    got = steered_generate(model, tok, ids, mask, config, None, SETTINGS, (), state=state)
    v = state["vectors"][layer] / state["vectors"][layer].norm()
    for i in range(len(PROMPTS)):  # each row alone, steered or not as the gate says
        one = tok([PROMPTS[i]], return_tensors="pt")
        with steer(model, layer, v, alpha if rows[i] else 0.0, prompt_len=one.input_ids.shape[1]):
            want = generate(model, tok, one.input_ids, one.attention_mask, SETTINGS)
        n = want.tokens.shape[1]
        assert got.texts[i] == want.texts[0], (i, bool(rows[i]))
        assert torch.equal(got.tokens[i, :n], want.tokens[0])


@pytest.mark.parametrize("method", ["caa", "pca"])
def test_two_layers_add_one_vector_each_with_one_alpha(method, llama):
    model, tok, ids, mask, hidden = llama
    state = _state(hidden, model.config.num_hidden_layers, seed=9)
    alpha = 3.0
    handles = []
    for layer in (0, 1):
        v = state["vectors"][layer] / state["vectors"][layer].norm()
        handles.append(_naive_hook(model, layer, lambda h, v=v: h + alpha * v))
    try:
        want = generate(model, tok, ids, mask, SETTINGS)
    finally:
        for handle in handles:
            handle.remove()
    config = _config(method, (0, 1), alpha, positions="all")
    got = steered_generate(model, tok, ids, mask, config, None, SETTINGS, (), state=state)
    assert torch.equal(got.tokens, want.tokens)
    one = steered_generate(model, tok, ids, mask, _config(method, 0, alpha, positions="all"),
                           None, SETTINGS, (), state=state)  # fmt: skip
    assert not torch.equal(one.tokens, got.tokens), "the second layer changes nothing"


def test_several_layers_are_refused_by_single_layer_methods(llama):
    model, tok, ids, mask, hidden = llama
    state = _state(hidden, model.config.num_hidden_layers)
    with pytest.raises(SteerlightError, match="method conditional steers one layer"):
        steered_generate(
            model, tok, ids, mask, _config("conditional", (0, 1), 1.0), None, SETTINGS, (),
            state=state,
        )  # fmt: skip


# ---- export and the figures' columns --------------------------------------------------------


@pytest.mark.parametrize("method", ["ablation", "conditional"])
def test_export_refuses_methods_that_are_not_fixed_vectors_in_one_line(method, tmp_path):
    from steerlight.export.state import read_state

    checkpoint = {"hyper_parameters": {"method": method, "alpha": 1.0}, "steering": {}}
    with pytest.raises(SteerlightError, match=f"method {method} is a .* not a fixed additive") as e:
        read_state(checkpoint, tmp_path / "x.ckpt", "gguf")
    assert "\n" not in str(e.value) and "caa" in str(e.value)


def test_export_refuses_several_layers_in_one_line(tiny_llama_dir, tmp_path):
    from steerlight.export.state import read_state

    hp = {"method": "caa", "alpha": 1.0, "layer": [0, 1], "model_name_or_path": str(tiny_llama_dir)}
    checkpoint = {"hyper_parameters": hp, "steering": {}}
    with pytest.raises(SteerlightError, match=r"steers layers \[0, 1\]; an export holds one"):
        read_state(checkpoint, tmp_path / "x.ckpt", "lm-eval")


def test_hparams_columns_name_the_method_and_its_own_settings():
    from steerlight.eval.figures import hparams_columns

    pca = hparams_columns({"method": "pca", "alpha": 1.0, "layer": [1, 2], "options": {}})
    assert pca["options.center"] == "pca_diff" and "1,2" in pca.values()
    assert not any(k.startswith(("dac.", "options.threshold")) for k in pca)
    dac = hparams_columns({"method": "dac", "alpha": 1.0, "dac": {"alpha_max": 2.0}})
    assert dac["dac.alpha_max"] == 2.0 and not any(k.startswith("options.") for k in dac)
    gated = {"method": "conditional", "alpha": 1.0, "options": {"threshold": 0.3}}
    assert hparams_columns(gated)["options.threshold"] == 0.3


def test_the_search_space_draws_several_layers_and_checks_options(tiny_llama_dir, tmp_path):
    import optuna
    from conftest import write_search_config

    from steerlight.search.command import parse_argv
    from steerlight.search.space import Space

    space = Space.from_dict({"method": ["caa"], "layer": [[0, 1], 1]}, "test")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.suggest(study.ask(), None)["layer"] for _ in range(12)]
    assert [0, 1] in drawn and 1 in drawn
    study.enqueue_trial(space.baseline(None))
    assert space.suggest(study.ask(), None)["layer"] == [0, 1]
    bad = {"method": ["pca"], "when": {"pca": {"options.center": ["pca_diff", "middle"]}}}
    config = write_search_config(tmp_path, tiny_llama_dir, bad)
    with pytest.raises(SteerlightError, match="options.center='middle': model.options for method"):
        parse_argv(["--config", str(config)])

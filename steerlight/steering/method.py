"""A steering method as a value: what it fits, how it steers, its strength, whether it exports.

Every method is a `SteeringMethod` registered by name (`register`); the CLI's `model.method`
choices, the search space, export, the figures and the verdict ask the registry (`get`,
`names`) instead of naming methods. The built-in methods live one per file under
`steerlight.steering` and register themselves on import; `names()` imports them all, so adding
a method is its file, its tests and a README row.

A method's own settings are a dataclass (`settings`) given as ``model.options`` (searched as
``options.<field>``); DAC keeps its ``model.dac`` group.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from steerlight.errors import SteerlightError
from steerlight.model.columns import Columns
from steerlight.model.generation import Generation, GenerationSettings
from steerlight.model.refill import refill_generate
from steerlight.steering.hooks import Positions, Steering, steer
from steerlight.steering.scaling import scale_vectors

Kind = Literal["none", "additive", "projection", "gated", "dynamic"]


@dataclass
class Call:
    """One steered generation: the batch, what steers it and how it is decoded."""

    model: nn.Module
    tokenizer: Any
    input_ids: Tensor
    attention_mask: Tensor
    config: Any  # steering.apply.SteeringConfig
    vector: Tensor | None  # scaled: (H,) at one layer, (k, H) at k layers
    settings: GenerationSettings
    stop_strings: Sequence[str]
    state: Mapping[str, Tensor]  # the fitted state (probes, per-step vectors)
    slots: int | None = None
    on_finish: Callable[[int], None] | None = None
    step_vectors: Tensor | None = None


class SteeringMethod:
    """The interface: subclasses set the class attributes and override what differs.

    The defaults describe CAA: the mean difference of good and bad activations (`direction`
    None), added as ``alpha * v`` at the configured layer(s).
    """

    name: ClassVar[str]
    kind: ClassVar[Kind] = "additive"
    strength: ClassVar[str | None] = "alpha"
    """The model argument that scales the steering (dotted in a group); 0 is unsteered."""
    exports: ClassVar[bool] = True
    """Whether a checkpoint is one fixed additive vector per layer (what export targets hold)."""
    multi_layer: ClassVar[bool] = True
    """Whether `model.layer` may be a list of layers (one vector each, one strength)."""
    settings: ClassVar[type | None] = None
    """Its own settings dataclass, given as `model.options`."""
    help: ClassVar[str] = ""

    def options(self, given: Mapping[str, Any] | None) -> Any:
        """The settings from `model.options` (fields of other methods are theirs, left out)."""
        given = dict(given or {})
        if self.settings is None:
            return None
        own = {f.name for f in dataclasses.fields(self.settings)}
        try:
            return self.settings(**{k: v for k, v in given.items() if k in own})
        except (TypeError, ValueError) as err:
            raise SteerlightError(f"model.options for method {self.name}: {err}") from None

    def strength_of(self, hparams: Mapping[str, Any]) -> float:
        """The strength the arguments set (0 when the method has none)."""
        if self.strength is None:
            return 0.0
        value: Any = hparams
        for key in self.strength.split("."):
            value = value.get(key, 0.0) if isinstance(value, Mapping) else getattr(value, key)
        return float(value)

    def fit_key(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """What the fitted state depends on beyond the activations (a cache key part); a
        ``direction`` entry names the method whose `direction` fits the vectors."""
        return {"icl": None}

    def direction(self, acts: Tensor, labels: Tensor, pairs: str, key: Mapping) -> Tensor | None:
        """(L, H) vectors, one per layer, from activations (N, L, H) and labels (N,); None for
        the mean difference (CAA's). `key` is this method's `fit_key` entry."""
        return None

    def vectors(self, state: Mapping[str, Tensor], config: Any) -> tuple[Tensor | None, Any]:
        """The scaled vector(s) at the steered layer(s), and per-step vectors (DAC's) or None."""
        return scaled(state, "vectors", config), None

    def generate(self, call: Call) -> Generation:
        """Completions with ``alpha * v`` added after each steered layer (row refill)."""
        return hooked_generate(call, project=False)

    def summary(self, config: Any) -> dict[str, Any]:
        """The method's own settings for the verdict (beside layer, positions, strength)."""
        options = config.options
        out = {"alpha": config.alpha} if self.strength == "alpha" else {}
        return {**out, **(dataclasses.asdict(options) if options is not None else {})}

    def export_vector(
        self, state: Mapping[str, Tensor], layer: int, hparams: Mapping[str, Any]
    ) -> tuple[Tensor, list[str]]:
        """The fitted (unscaled) vector an export holds at `layer`, and notes on what is lost."""
        if "vectors" not in state:
            raise SteerlightError("the checkpoint holds no steering vectors: run `fit` first")
        return state["vectors"][layer].float(), []

    def export_notes(self, target: str, strength: float) -> list[str]:
        """What `target`'s fixed vector cannot express of this method, in words."""
        return []

    def refusal(self) -> str:
        """Why an export target cannot hold this method (for methods that do not export)."""
        return f"method {self.name} is a {self.kind} steering, not a fixed additive vector"


_REGISTRY: dict[str, SteeringMethod] = {}
_LOADED = False


def register(method: Any) -> Any:
    """Add a method (an instance, or a class, which is instantiated) under its `name`; returns
    what it was given, so it decorates a class."""
    instance = method() if isinstance(method, type) else method
    _REGISTRY[instance.name] = instance
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    """Import every module of `steerlight.steering`: the built-in methods register there."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import steerlight.steering as package

    importlib.import_module(f"{package.__name__}.caa")  # the default method is listed first
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def registry() -> dict[str, SteeringMethod]:
    _load_builtins()
    return dict(_REGISTRY)


def names() -> list[str]:
    """Every registered method's name, in registration order."""
    return list(registry())


def get(name: str) -> SteeringMethod:
    """The method called `name`, or one line naming the valid ones."""
    methods = registry()
    if name not in methods:
        raise SteerlightError(
            f"model.method={name!r} is not a steering method; use one of {', '.join(methods)}"
        )
    return methods[name]


def describe() -> str:
    """The `--model.method` help: every registered method in one line each."""
    lines = [f"{m.name}: {m.help or m.kind}" for m in registry().values()]
    return "Steering method (model.options holds its own settings). " + "; ".join(lines)


def option_fields() -> dict[str, set[str]]:
    """Each `model.options` field and the methods that read it."""
    out: dict[str, set[str]] = {}
    for method in registry().values():
        for f in dataclasses.fields(method.settings) if method.settings else ():
            out.setdefault(f.name, set()).add(method.name)
    return out


def check_options(method: str, options: Mapping[str, Any] | None) -> Any:
    """`model.options` checked: every field belongs to some method; this method's settings."""
    fields = option_fields()
    unknown = sorted(set(options or {}) - set(fields))
    if unknown:
        raise SteerlightError(
            f"model.options: unknown field {unknown[0]!r}; valid: {', '.join(sorted(fields))}"
        )
    return get(method).options(options)


# ---- shared by the methods ------------------------------------------------------------------


def scaled(state: Mapping[str, Tensor], name: str, config: Any) -> Tensor:
    """The fitted `name` vectors at the steered layer(s), scaled by the normalization."""
    if name not in state:
        raise SteerlightError(
            f"no steering {name}: run `fit` first, or `validate`/`test` with --ckpt"
        )
    layers = config.layers
    index = layers[0] if len(layers) == 1 else list(layers)
    vectors = state[name][..., index, :]
    return scale_vectors(vectors, config.normalization, state["act_norm"][index])


class SteeringGroup:
    """The `Steering` objects of several layers, driven as one: one strength, one `Columns`."""

    def __init__(self, parts: Sequence[Steering]) -> None:
        self.parts = list(parts)
        self.columns = self.parts[0].columns

    @property
    def alpha(self) -> Tensor:
        return self.parts[0].alpha

    @property
    def per_row(self) -> bool:
        return self.parts[0].per_row


@contextmanager
def steer_layers(
    model: nn.Module,
    layers: Sequence[int],
    vectors: Tensor,
    alpha: float | Tensor,
    positions: Positions,
    prompt_len: int,
    project: bool = False,
) -> Iterator[Steering | SteeringGroup]:
    """`steer` at every layer of `layers` (vectors (H,) for one, (k, H) for k), as one object
    whose layers share one `Columns` of the model."""
    if len(layers) == 1:
        vectors = vectors.reshape(1, -1)
    with ExitStack() as stack:
        columns = stack.enter_context(Columns(prompt_len).watch(model))
        parts = [
            stack.enter_context(
                steer(model, layer, v, alpha, positions, project=project, columns=columns)
            )
            for layer, v in zip(layers, vectors, strict=True)
        ]
        yield parts[0] if len(parts) == 1 else SteeringGroup(parts)


def hooked_generate(call: Call, project: bool) -> Generation:
    """Row-refill generation with the call's vector(s) added (or projected out) at its layers."""
    c = call.config
    args = (call.model, call.tokenizer, call.input_ids, call.attention_mask)
    width = call.input_ids.shape[1]
    with steer_layers(
        call.model, c.layers, call.vector, c.alpha, c.positions, width, project
    ) as steering:
        return refill_generate(
            *args,
            call.settings,
            call.stop_strings,
            call.slots,
            steering.columns,
            call.on_finish,
            fixed_rows=steering.per_row,
        )

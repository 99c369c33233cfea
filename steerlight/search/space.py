"""The search space: YAML dimensions -> Optuna distributions, suggestions and trial 0."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from steerlight.errors import SteerlightError


def searchable_names() -> set[str]:
    """Every name a space may use: `SteeredLM` arguments, `group.field` of its groups and
    `options.field` of every registered method's settings."""
    from steerlight.module import SETTINGS_GROUPS, SteeredLM
    from steerlight.steering.method import option_fields

    names = set(inspect.signature(SteeredLM.__init__).parameters) - {"self", *SETTINGS_GROUPS}
    for group, cls in SETTINGS_GROUPS.items():
        names |= {f"{group}.{f.name}" for f in dataclasses.fields(cls)}
    return (names - {"options"}) | {f"options.{name}" for name in option_fields()}


def nest(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted names as nested mappings: {"dac.alpha_max": 2} -> {"dac": {"alpha_max": 2}}."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


@dataclass
class Space:
    """Search dimensions from YAML: `name: [choices]`, `name: {low, high[, log, step]}`, or a value.

    Names are `SteeredLM` arguments, and `group.field` for its settings groups
    (`dac.alpha_max`, `generation.max_new_tokens`). `layer: {probe_top_k: N}` searches the N
    layers whose probes score best on train (`min_layer: 1` leaves out layer 0, whose output
    llama.cpp control vectors cannot steer). `when: {method: {...}}` adds dimensions only for
    that method.
    """

    params: dict[str, Any]
    when: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], origin: str) -> Space:
        if not isinstance(spec, Mapping) or not spec:
            raise SteerlightError(f"{origin}: the search space must be a non-empty mapping")
        spec = dict(spec)
        when = spec.pop("when", None) or {}
        space = cls(spec, {str(k): dict(v) for k, v in when.items()})
        space.validate(origin)
        return space

    def validate(self, origin: str) -> None:
        valid = searchable_names()
        for group, params in [
            ("", self.params),
            *((f"when.{m}.", p) for m, p in self.when.items()),
        ]:
            for name, spec in params.items():
                if name not in valid:
                    raise SteerlightError(
                        f"{origin}: unknown search parameter {group}{name!r}; "
                        f"valid: {', '.join(sorted(valid))}"
                    )
                _check_dimension(f"{origin}: {group}{name}", spec)
                if not (isinstance(spec, Mapping) and "probe_top_k" in spec):
                    try:
                        _distribution(name, spec, None)
                    except SteerlightError as err:
                        raise SteerlightError(f"{origin}: {group}{err}") from None
        from steerlight.steering.method import names

        methods = self.params.get("method")
        for method in [*_as_list(methods if methods is not None else []), *self.when]:
            if method not in names():
                raise SteerlightError(
                    f"{origin}: method {method!r} is not a steering method; "
                    f"use one of {', '.join(names())}"
                )
        for method in self.when:
            if methods is not None and method not in _as_list(methods):
                raise SteerlightError(f"{origin}: when.{method} names a method not searched")

    def values(self) -> list[tuple[str, Any]]:
        """Every (name, value) a trial can receive: fixed values, choices and range ends."""
        out = []
        for params in (self.params, *self.when.values()):
            for name, spec in params.items():
                if isinstance(spec, list):
                    out += [(name, v) for v in spec]
                elif isinstance(spec, Mapping) and "probe_top_k" not in spec:
                    out += [(name, spec["low"]), (name, spec["high"])]
                elif not isinstance(spec, Mapping):
                    out.append((name, spec))
        return out

    @property
    def needs_probes(self) -> bool:
        return any(
            isinstance(p.get("layer"), Mapping) and "probe_top_k" in p["layer"]
            for p in (self.params, *self.when.values())
        )

    def suggest(self, trial, probe_auc: list[float] | None) -> dict[str, Any]:
        """Draw one configuration: a dict of `SteeredLM` arguments."""
        values = {n: _suggest(trial, n, s, probe_auc) for n, s in self.params.items()}
        for name, spec in self.when.get(values.get("method", ""), {}).items():
            values[name] = _suggest(trial, name, spec, probe_auc)
        return values

    def distributions(self, probe_auc: list[float] | None) -> dict[str, Any]:
        """Every searched dimension's Optuna distribution (conditional ones included)."""
        dims = [*self.params.items(), *(i for p in self.when.values() for i in p.items())]
        out = {}
        for name, spec in dims:
            dist = _distribution(name, spec, probe_auc)
            if dist is not None:
                out[name] = dist
        return out

    def check_study(self, study, probe_auc: list[float] | None) -> None:
        """Refuse to resume a study whose trials drew a dimension from another distribution.

        Optuna would otherwise fail every later trial of the resumed study with a ValueError.
        """
        from optuna.distributions import check_distribution_compatibility

        new = self.distributions(probe_auc)
        for trial in study.get_trials(deepcopy=False):
            for name, old in trial.distributions.items():
                if name not in new:
                    continue
                try:
                    check_distribution_compatibility(old, new[name])
                except ValueError:
                    raise SteerlightError(
                        f"study {study.study_name!r} searched {name} over {_describe(old)}, "
                        f"this space has {_describe(new[name])}: use the study's space again, "
                        "or another --study-name for the new one"
                    ) from None

    def baseline(self, probe_auc: list[float] | None) -> dict[str, Any]:
        """Trial 0: the unsteered model (alpha = 0, with the first searched method whose
        strength is alpha), and the first choice of every other categorical dimension so that
        it is a valid configuration."""
        params = {}
        for name, spec in self.params.items():
            if isinstance(spec, list):
                params[name] = _choice(spec[0])
            elif isinstance(spec, Mapping) and "probe_top_k" in spec and probe_auc is not None:
                params[name] = _top_layers(probe_auc, spec)[0]
        from steerlight.steering.method import get

        alpha = [m for m in _as_list(self.params.get("method", [])) if get(m).strength == "alpha"]
        if alpha:
            params["method"] = alpha[0]
        return {**params, "alpha": 0.0}


def _describe(dist) -> str:
    """A distribution in the words of the YAML space: choices, or a range."""
    if hasattr(dist, "choices"):
        return f"choices {list(dist.choices)}"
    kind = "integers" if type(dist).__name__.startswith("Int") else "floats"
    extra = ", log" if dist.log else (f", step {dist.step}" if dist.step else "")
    return f"{kind} {dist.low}..{dist.high}{extra}"


def _as_list(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, list) else [spec]


def _check_dimension(where: str, spec: Any) -> None:
    if isinstance(spec, list) and not spec:
        raise SteerlightError(f"{where}: an empty list of choices")
    if isinstance(spec, Mapping):
        if "probe_top_k" in spec:
            k, low = spec["probe_top_k"], spec.get("min_layer", 0)
            if not isinstance(k, int) or k < 1:
                raise SteerlightError(f"{where}: probe_top_k must be a positive integer, got {k!r}")
            if set(spec) - {"probe_top_k", "min_layer"} or not isinstance(low, int) or low < 0:
                raise SteerlightError(
                    f"{where}: a probe choice is {{probe_top_k: N}} with an optional "
                    f"min_layer (an integer >= 0); got {dict(spec)}"
                )
            return
        if set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
            raise SteerlightError(
                f"{where}: a range needs `low` and `high` (optional `log`, `step`); "
                f"got {dict(spec)}"
            )
        low, high = spec["low"], spec["high"]
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (low, high)):
            raise SteerlightError(f"{where}: low and high must be finite numbers")
        if low >= high:
            raise SteerlightError(f"{where}: low ({low}) must be below high ({high})")


def _top_layers(probe_auc: list[float], spec: Mapping[str, int]) -> list[int]:
    """The `probe_top_k` layers from `min_layer` on whose probes score best, in layer order."""
    low = spec.get("min_layer", 0)
    if low >= len(probe_auc):
        raise SteerlightError(
            f"layer: min_layer {low} leaves none of the model's {len(probe_auc)} layers"
        )
    ranked = sorted(range(low, len(probe_auc)), key=lambda i: -probe_auc[i])
    return sorted(ranked[: spec["probe_top_k"]])


def _choice(value: Any) -> Any:
    """A choice as Optuna holds it: a list (several layers) as its JSON text, '[1, 2]'."""
    return json.dumps(value) if isinstance(value, list) else value


def _unchoice(value: Any) -> Any:
    """A model argument from an Optuna choice: '[1, 2]' back to [1, 2]."""
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


def _distribution(name: str, spec: Any, probe_auc: list[float] | None):
    """The Optuna distribution one dimension draws from, or None for a fixed value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, list):
        return CategoricalDistribution([_choice(v) for v in spec])
    if isinstance(spec, Mapping) and "probe_top_k" in spec:
        if probe_auc is None:
            raise SteerlightError("layer: probe_top_k needs the probes fitted before the search")
        return CategoricalDistribution(_top_layers(probe_auc, spec))
    if isinstance(spec, Mapping):
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        try:
            if (
                isinstance(low, int)
                and isinstance(high, int)
                and not isinstance(spec.get("step"), float)
            ):
                return IntDistribution(low, high, log=log, step=spec.get("step", 1))
            return FloatDistribution(low, high, log=log, step=spec.get("step"))
        except ValueError as err:  # e.g. log with step, or a non-positive log range
            raise SteerlightError(f"{name}: {err}") from None
    return None


def _suggest(trial, name: str, spec: Any, probe_auc: list[float] | None) -> Any:
    """One dimension's value for `trial`, through Optuna's suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    dist = _distribution(name, spec, probe_auc)
    if dist is None:
        return spec
    if isinstance(dist, CategoricalDistribution):
        return _unchoice(trial.suggest_categorical(name, list(dist.choices)))
    suggest = trial.suggest_int if isinstance(dist, IntDistribution) else trial.suggest_float
    return suggest(name, dist.low, dist.high, step=dist.step, log=dist.log)

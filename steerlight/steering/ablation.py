"""Directional ablation (Arditi et al. 2024): ``h <- h - alpha * r r^T h`` after the layer(s).

``r`` is the unit mean difference of good and bad activations (CAA's direction); ``alpha``
scales the removal: 0 is the unsteered model, 1 removes the component along ``r`` entirely,
and other values shrink (0..1), flip (> 1) or amplify (< 0) it. The normalization does not
matter (``r`` is unit). Not a fixed additive vector, so it does not export.
"""

from __future__ import annotations

from steerlight.model.generation import Generation
from steerlight.steering.method import Call, SteeringMethod, hooked_generate, register


@register
class Ablation(SteeringMethod):
    """Removes ``alpha`` times each hidden state's component along the unit CAA direction."""

    name = "ablation"
    kind = "projection"
    exports = False
    help = "h - alpha * r r^T h, r the unit mean difference (alpha 1: removed)"

    def generate(self, call: Call) -> Generation:
        return hooked_generate(call, project=True)

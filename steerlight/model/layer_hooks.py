"""One forward hook per decoder layer, the same object every time, that runs the layer's edits.

Steering blocks come and go (a search opens one per trial), but a compiled decode step
(`steerlight.model.compiled`) traces the hooks it finds once: ``torch.compile`` does not guard
on a module's hooks, so a graph traced with one trial's hook object would keep running it. Here
every decoder layer has one `LayerHooks` for the model's lifetime; a steering block adds its
edit to it (`add`) and takes it out on exit, and the `LayerHooks` is registered on its layer
only while it holds an edit. `pinned` registers every layer's for a compiled call, so the traced
code is the same object's whatever steers: it reads the edits it holds (guarded by their
count), and alpha or vector values are tensors read at each call, not constants.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from torch import nn

Edit = Callable[[nn.Module, tuple, Any], Any]
"""A forward hook: (module, args, output) -> a new output, or None to leave it."""

_OF_LAYER: weakref.WeakKeyDictionary[nn.Module, LayerHooks] = weakref.WeakKeyDictionary()


class LayerHooks:
    """The edits of one decoder layer's output, run newest first (as hooks registered with
    ``prepend=True`` run), registered on the layer while it holds any or is pinned."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = weakref.ref(layer)
        self.edits: list[Edit] = []
        self._pins = 0
        self._handle: Any = None

    @staticmethod
    def of(layer: nn.Module) -> LayerHooks:
        """The layer's own `LayerHooks` (made on first use)."""
        hooks = _OF_LAYER.get(layer)
        if hooks is None:
            hooks = _OF_LAYER[layer] = LayerHooks(layer)
        return hooks

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        changed = None
        for edit in reversed(self.edits):
            new = edit(module, args, output if changed is None else changed)
            changed = changed if new is None else new
        return changed

    @contextmanager
    def add(self, edit: Edit) -> Iterator[None]:
        """`edit` runs on the layer's output inside the ``with`` block."""
        self.edits.append(edit)
        self._sync()
        try:
            yield
        finally:
            self.edits.remove(edit)
            self._sync()

    @contextmanager
    def pin(self) -> Iterator[None]:
        """Registered on the layer inside the ``with`` block, with or without edits."""
        self._pins += 1
        self._sync()
        try:
            yield
        finally:
            self._pins -= 1
            self._sync()

    def _sync(self) -> None:
        wanted = bool(self.edits) or self._pins > 0
        if wanted and self._handle is None:
            layer = self.layer()
            assert layer is not None, "a LayerHooks outlived its layer"
            self._handle = layer.register_forward_hook(self, prepend=True)
        elif not wanted and self._handle is not None:
            self._handle.remove()
            self._handle = None


@contextmanager
def pinned(layers: list[nn.Module]) -> Iterator[None]:
    """Every layer's `LayerHooks` registered inside the ``with`` block (see the module doc)."""
    with ExitStack() as stack:
        for layer in layers:
            stack.enter_context(LayerHooks.of(layer).pin())
        yield

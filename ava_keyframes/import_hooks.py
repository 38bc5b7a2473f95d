"""Import one module right after another loads, without loading either now.

Both packages register things with heavy libraries only when those are used: `ava_keyframes`
registers its TFDS builder once TensorFlow Datasets is imported, `detector` its Keras classes
once Keras is, so ``import ava_keyframes`` / ``import detector`` stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from importlib.machinery import ModuleSpec, PathFinder


class _ImportAfter(importlib.abc.MetaPathFinder):
    """Wraps the loader of `trigger` so that `module` is imported when it has run."""

    def __init__(self, trigger: str, module: str) -> None:
        self.trigger, self.module = trigger, module

    def find_spec(self, name, path, target=None) -> ModuleSpec | None:  # noqa: ANN001
        """The path finder's spec of `trigger` with its loader wrapped. A probe (TF asks for
        Keras's spec many times without importing it) leaves the hook in place; the import
        that runs the module removes it."""
        if name != self.trigger:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(loaded):  # noqa: ANN001, ANN202
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                run_module(loaded)
                importlib.import_module(self.module)

            spec.loader.exec_module = exec_module
        return spec


def import_after(trigger: str, module: str) -> None:
    """Import `module` at once if `trigger` is already imported, else right after it is."""
    if trigger in sys.modules:
        importlib.import_module(module)
        return
    pending = (f for f in sys.meta_path if isinstance(f, _ImportAfter))
    if not any(f.trigger == trigger and f.module == module for f in pending):
        sys.meta_path.insert(0, _ImportAfter(trigger, module))

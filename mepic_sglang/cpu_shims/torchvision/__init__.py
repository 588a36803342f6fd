"""Import-only stand-in for ``torchvision`` (see ``mepic_sglang/cpu_shims/__init__.py``).

SGLang imports ``torchvision.transforms`` at module level through its multimodal configs, but only
uses it to preprocess images. Every ``torchvision.*`` module imports; every attribute is a
placeholder that raises ``RuntimeError`` when used, so a multimodal model fails loudly instead of
computing garbage. Text models never touch it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any, NoReturn

__version__ = "0.0.0+mepic.cpu.shim"
MEPIC_CPU_SHIM = True


class _Placeholder:
    def __init__(self, qualname: str) -> None:
        self._qualname = qualname

    def __getattr__(self, item: str) -> _Placeholder:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{self._qualname}.{item}")

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(
            f"{self._qualname} is not available: torchvision is the mepic-sglang CPU shim "
            "(multimodal preprocessing is not supported on this install)"
        )

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)  # `class X(torchvision.Foo)` still defines a class

    def __repr__(self) -> str:
        return f"<torchvision shim {self._qualname}>"


def _module_getattr(module_name: str) -> Any:
    def __getattr__(item: str) -> _Placeholder:
        if item.startswith("__"):
            raise AttributeError(item)
        return _Placeholder(f"{module_name}.{item}")

    return __getattr__


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import torchvision.<anything>`` succeed with a placeholder module."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


sys.meta_path.append(_SubmoduleFinder())
__getattr__ = _module_getattr(__name__)

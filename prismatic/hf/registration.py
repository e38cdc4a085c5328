"""Registers the DyVA classes (`prismatic.hf`) with transformers' auto classes, without importing transformers early.

`import prismatic` must stay cheap and load no transformers (docs/architecture.md), yet the auto classes must know
"dyva" once prismatic is imported. So `register_with_transformers()` (called by `prismatic/__init__.py`) registers at
once when transformers is already imported, and otherwise installs a one-shot import hook that registers right after
the first `import transformers` finishes. `register()` is idempotent and can be called directly.

The first `import transformers` may come from one of the very modules that define the classes (their base classes are
transformers'); registering then would import a half-initialized module. The hook then leaves the registration
pending, and each of those modules calls `registration_point()` when it has finished executing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

_TRANSFORMERS = "transformers"
# The modules that define the registered classes (see the module docstring).
_CLASS_MODULES = ("prismatic.hf.configuration", "prismatic.hf.modeling", "prismatic.hf.processing")
_registered = False
_pending = False


def register() -> None:
    """Register DyVAConfig / DyVAForConditionalGeneration / DyVAProcessor with AutoConfig,
    AutoModelForImageTextToText and AutoProcessor (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from prismatic.hf.configuration import DYVA_MODEL_TYPE, DyVAConfig
    from prismatic.hf.modeling import DyVAForConditionalGeneration
    from prismatic.hf.processing import DyVAProcessor

    AutoConfig.register(DYVA_MODEL_TYPE, DyVAConfig, exist_ok=True)
    AutoModelForImageTextToText.register(DyVAConfig, DyVAForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(DyVAConfig, DyVAProcessor, exist_ok=True)
    _registered = True


def _initializing(module_name: str) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_after_import(finished: str | None = None) -> None:
    """Register unless a class module other than `finished` (the one calling from its last line) is mid-import."""
    global _pending
    if any(_initializing(name) for name in _CLASS_MODULES if name != finished):
        _pending = True  # finished by `registration_point()` at the end of the module being imported
        return
    _pending = False
    try:
        register()
    except Exception as error:  # never break the user's `import transformers` over our registration
        warnings.warn(
            f"prismatic could not register its DyVA classes with transformers' auto classes ({type(error).__name__}: "
            f"{error}); call prismatic.hf.register() to see the full error.",
            RuntimeWarning,
            stacklevel=2,
        )


def registration_point(module_name: str) -> None:
    """Called on the last line of each class module (`module_name`): finishes a registration left pending."""
    if _pending and not _registered:
        _register_after_import(finished=module_name)


class _RegisteringLoader(importlib.abc.Loader):
    """Runs transformers' own loader, puts it back on the module, then registers."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        _remove_hook()
        module.__loader__ = module.__spec__.loader = self.loader  # transformers sees its own loader afterwards
        self.loader.exec_module(module)
        _register_after_import()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for `transformers` it returns the real spec with its loader wrapped. It stays in place
    until the module is actually executed (`_RegisteringLoader` removes it): a mere `importlib.util.find_spec`
    (diffusers' "is transformers available?" check) imports nothing and must not use the hook up."""

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TRANSFORMERS or self._searching:
            return None
        self._searching = True  # the real finders below answer this inner search
        try:
            spec = importlib.util.find_spec(_TRANSFORMERS)
        finally:
            self._searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TransformersImportHook)]


def register_with_transformers() -> None:
    """Register now if transformers is imported, else right after it is (cheap: no import happens here)."""
    if _TRANSFORMERS in sys.modules:
        _register_after_import()
    elif not any(isinstance(finder, _TransformersImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())

"""dyva-worldlm: World-Language Models (DyVA) in a prismatic-vlms-style framework.

`from prismatic import load` gives a trained VLM from a run directory or the authors' released checkpoints. The names
below resolve on first use (PEP 562), so `import prismatic` or any `--help` stays cheap: diffusers, timm and
transformers are imported only once a model is built or loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prismatic.hf.registration import register_with_transformers
from prismatic.util.safe_yaml import install_safe_yaml_loader

if TYPE_CHECKING:
    from prismatic.loader import available_model_ids, available_model_names, get_model_description, load

install_safe_yaml_loader()  # config files are data (prismatic/util/safe_yaml.py)
# transformers' auto classes learn the "dyva" model type (prismatic/hf); transformers itself is not imported here.
register_with_transformers()

__all__ = ["available_model_ids", "available_model_names", "get_model_description", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("prismatic.loader"), name)
    raise AttributeError(f"module 'prismatic' has no attribute {name!r}")

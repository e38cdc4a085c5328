"""Hugging Face native formats of the framework's VLMs (docs/hf_formats.md).

- `export_llava(vlm, out_dir)`: a SigLIP-only model as a transformers `LlavaForConditionalGeneration` directory
  (no custom code; `pipeline("image-text-to-text")` serves it);
- `export_auto(run_dir_or_vlm, out_dir, model_config=None)`: any model (DyVA included) as a "dyva" directory that
  transformers' auto classes load once `prismatic` is imported (`register()` does the registration; `prismatic`'s
  import installs it without importing transformers).

The names resolve on first use, so importing this package (which `import prismatic` does) loads no transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prismatic.hf.auto import export_auto
    from prismatic.hf.llava import export_llava
    from prismatic.hf.registration import register

__all__ = ["export_auto", "export_llava", "register"]
_WHERE = {"export_auto": "prismatic.hf.auto", "export_llava": "prismatic.hf.llava",
          "register": "prismatic.hf.registration"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'prismatic.hf' has no attribute {name!r}")

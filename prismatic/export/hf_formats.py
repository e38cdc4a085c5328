"""The Hugging Face formats of `scripts/export.py --format`: `llava` (a `LlavaForConditionalGeneration` directory, no
custom code; SigLIP-only models with a Llava-shaped projector) and `hf-auto` (the DyVA classes registered with
transformers' auto classes when `prismatic` is imported). Both hold plain weights: LoRA adapters are merged first.
The formats themselves live in `prismatic/hf/` (docs/hf_formats.md); this module adapts them to the export interface.
"""

from __future__ import annotations

from pathlib import Path

from prismatic.export.native import ExportOptions, load_for_export, merge_lora
from prismatic.hf.auto import export_auto
from prismatic.hf.llava import export_llava


def export_llava_format(source: Path, out: Path, options: ExportOptions) -> Path:
    vlm, model_cfg, _ = load_for_export(source, options)
    merge_lora(vlm, model_cfg)
    return export_llava(vlm, out)


def export_hf_auto_format(source: Path, out: Path, options: ExportOptions) -> Path:
    vlm, model_cfg, _ = load_for_export(source, options)
    merge_lora(vlm, model_cfg)
    return export_auto(vlm, out, model_config=model_cfg)

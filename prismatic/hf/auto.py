"""Export any framework VLM (DyVA included) as an hf-auto directory: transformers' auto classes load it, no remote code.

The directory holds, in one place and nothing else needed:
- `config.json`: a `DyVAConfig` (model_type "dyva") with the framework's model config (`model`, `num_frames`,
  `stage`), so both `AutoModelForImageTextToText.from_pretrained(OUT)` and `prismatic.load(OUT)` read it;
- `model.safetensors`: every weight of the VLM under the framework's names (the static encoder, the generative
  encoder's parts the feature pass uses, the projector, the LLM), so nothing is fetched from the hub;
- the tokenizer files, `processor_config.json` (a `DyVAProcessor`) and `chat_template.jinja` (the framework's prompt
  format), and `generation_config.json` (greedy, 128 new tokens, the family's stop and pad tokens).
The model and processor classes are registered with transformers when `prismatic` is imported
(`prismatic.hf.registration`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prismatic.hf.chat_template import build_chat_template
from prismatic.hf.configuration import DyVAConfig
from prismatic.hf.llava import check_no_adapters
from prismatic.hf.modeling import DyVAForConditionalGeneration
from prismatic.hf.processing import DyVAProcessor
from prismatic.models.stages import Stage
from prismatic.models.vlms.generation import GenerationOptions, generation_config

if TYPE_CHECKING:
    from prismatic.conf.models import ModelConfig
    from prismatic.models.vlms.prismatic import PrismaticVLM

# The export holds every weight: `prismatic.load(OUT)` then checks the file against the full-finetune set, i.e. all.
EXPORTED_STAGE = Stage.FULL_FINETUNE


def _run_model_config(run_dir: Path) -> ModelConfig:
    """The model config `prismatic.load` builds a run directory's model from (the run's frame slots win)."""
    import draccus

    from prismatic.conf.models import ModelConfig

    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json; pass a run directory written by scripts/pretrain.py.")
    config = json.loads(config_file.read_text())
    model_cfg = draccus.decode(ModelConfig, config["model"])
    if config.get("num_frames"):
        model_cfg.svd_num_frames = int(config["num_frames"])
    return model_cfg


def _portable(model_cfg: ModelConfig) -> ModelConfig:
    """The config without this machine's local weight sources (the export holds those weights itself; a video
    model's empty-prompt embedding too, a persistent buffer) and without LoRA (the exported weights are plain, adapters
    merged: `check_no_adapters`)."""
    changes: dict[str, object] = {"vision_pretrained_path": None, "llm_pretrained_path": None,
                                  "video_prompt_embeds": None}  # fmt: skip
    if "lora_rank" in {f.name for f in fields(model_cfg)}:
        changes["lora_rank"] = 0
    return replace(model_cfg, **changes)


def dyva_config(vlm: PrismaticVLM, model_cfg: ModelConfig) -> DyVAConfig:
    from prismatic.training.run_setup import encode_config

    dtype = next(vlm.llm_backbone.parameters()).dtype
    return DyVAConfig(model=encode_config(_portable(model_cfg)), num_frames=model_cfg.svd_num_frames,
                      stage=EXPORTED_STAGE.value, dtype=str(dtype).removeprefix("torch."))  # fmt: skip


def dyva_processor(vlm: PrismaticVLM, config: DyVAConfig) -> DyVAProcessor:
    conversation = vlm.llm_backbone.conversation_tokenizer()
    template = build_chat_template(conversation.prompt_builder, image_anchor=None, image_token=None)
    return DyVAProcessor(tokenizer=copy.deepcopy(vlm.llm_backbone.tokenizer), model_config=config.model,
                         num_frames=config.num_frames, chat_template=template)  # fmt: skip


def export_auto(source: PrismaticVLM | str | Path, out_dir: str | Path, model_config: ModelConfig | None = None) -> Path:
    """Write an hf-auto directory of `source` (a run directory, loaded with `prismatic.load`, or a built VLM together
    with the `model_config` it was built from) to `out_dir`; returns `out_dir`."""
    from prismatic.models.vlms.prismatic import PrismaticVLM

    if isinstance(source, PrismaticVLM):
        if model_config is None:
            raise ValueError("Exporting a VLM object needs the ModelConfig it was built from: pass model_config=...")
        vlm, model_cfg = source, model_config
    else:
        from prismatic.loader import load

        vlm, model_cfg = load(source), model_config or _run_model_config(Path(source))
    check_no_adapters(vlm)
    config = dyva_config(vlm, model_cfg)
    model = DyVAForConditionalGeneration(config, vlm=vlm)
    model.generation_config = generation_config(vlm.llm_backbone, GenerationOptions())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(out)
    dyva_processor(vlm, config).save_pretrained(out)
    return out

"""The model card (`README.md`) of an exported directory: what the model is, how it was trained (the command, data,
steps, final loss), the evaluation results found in the run directory, and how to load it.

Everything comes from what the source directory holds: a run's config.json, metrics.jsonl and any `results.json`
written by `scripts/evaluate.py` under it (`--results_dir` inside the run directory) or `--eval_every` metrics; a
released checkpoint gets the description of its release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismatic.conf.models import ModelConfig

TRAINING_CONFIG = "training_config.yaml"  # the run's config.yaml, copied next to the card


@dataclass(frozen=True)
class CardInputs:
    """What the card describes: the exported model and the directory it came from."""

    model_cfg: ModelConfig
    run_config: dict[str, Any] | None  # None for the authors' release layout
    source: Path
    merged_lora: bool
    adapters: tuple[str, ...]  # parts shipped as peft adapter directories
    has_training_config: bool


def _metrics(source: Path) -> list[dict[str, Any]]:
    file = source / "metrics.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def _evaluations(source: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: each `results.json` under the source (benchmark = its folder), then in-training eval/*."""
    lines = []
    for file in sorted(source.rglob("results.json")):
        payload = json.loads(file.read_text())
        metrics = payload.get("metrics", {}) if isinstance(payload, dict) else {}
        shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics.items() if isinstance(value, int | float))
        lines.append(f"- {file.parent.name} (`{file.relative_to(source)}`): {shown or 'no numeric metrics'}")
    evaluated = [row for row in rows if any(key.startswith("eval/") for key in row)]
    if evaluated:
        last = evaluated[-1]
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in last.items()
                          if k.startswith("eval/") and isinstance(v, int | float))  # fmt: skip
        lines.append(f"- held-out evaluation during training, step {last['step']}: {shown}")
    return lines


def _training(inputs: CardInputs, rows: list[dict[str, Any]]) -> list[str]:
    config = inputs.run_config
    if config is None:
        return ["Released by the DyVA authors (`dyva/DyVA-WorldLM`): the projector and the LLM were finetuned on "
                "LLaVA-1.5's instruction data (arXiv 2510.00855); this directory re-shares their `.pt` checkpoint as "
                "safetensors."]  # fmt: skip
    cfg, stage = inputs.model_cfg, str(config.get("stage", "finetune"))
    recipe = "align" if stage == "align" else "finetune"
    dataset = config.get("dataset", {})
    lines = [
        f"- stage: `{stage}`; model type `{config['model'].get('type', cfg.model_id)}`",
        f"- data: `{dataset.get('type')}` from `{dataset.get('dataset_root_dir')}` "
        f"({dataset.get(f'{recipe}_stage_components')})",
        f"- optimisation: learning rate {getattr(cfg, f'{recipe}_learning_rate')}, global batch "
        f"{getattr(cfg, f'{recipe}_global_batch_size')}, strategy `{getattr(cfg, f'{recipe}_train_strategy')}`",
    ]
    if rows:
        lines.append(f"- steps: {rows[-1]['step']} (final training loss {rows[-1]['loss']:.4f})")
    if cfg.lora_rank > 0:
        how = "merged into the base weights" if inputs.merged_lora else f"adapters in `adapters/` ({inputs.adapters})"
        lines.append(f"- LoRA: rank {cfg.lora_rank}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}; {how}")
    if inputs.has_training_config:
        lines.append(f"- command: `python scripts/pretrain.py --config_path {TRAINING_CONFIG}` (the run's resolved "
                     "config; point `--dataset.dataset_root_dir` at your copy of the data)")  # fmt: skip
    return lines


def model_card(inputs: CardInputs) -> str:
    """The card's Markdown text."""
    cfg = inputs.model_cfg
    rows = _metrics(inputs.source)
    evaluations = _evaluations(inputs.source, rows) or ["None found in the source directory."]
    sections = [
        "---\nlibrary_name: prismatic\npipeline_tag: image-text-to-text\ntags:\n- dyva\n- vision-language\n---\n",
        f"# {cfg.model_id}\n",
        f"A World-Language Model in the dyva-worldlm format: vision backbone `{cfg.vision_backbone_id}`, projector "
        f"`{cfg.arch_specifier}`, LLM `{cfg.llm_backbone_id}`. Every weight is in this directory as safetensors: "
        "`vision/` (static encoder, timm), `svd/` (generative encoder, diffusers), `llm/` (transformers, with its "
        "tokenizer), `model.safetensors` (projector), `adapters/` (peft LoRA adapters, when not merged); "
        "`config.json` is the resolved model config and `export.json` names the parts.\n",
        "## Use\n",
        "```python\nfrom prismatic import load\n\nvlm = load(\"path/to/this/directory\")  # nothing else is read\n"
        "builder = vlm.get_prompt_builder()\nbuilder.add_turn(role=\"human\", message=\"What is going on?\")\n"
        "print(vlm.generate(image, builder.get_prompt(), max_new_tokens=64))\n```\n",
        "From the hub: `huggingface_hub.snapshot_download(REPO_ID)` and `load` the folder it returns.\n",
        "## Training\n",
        "\n".join(_training(inputs, rows)) + "\n",
        "## Evaluation\n",
        "\n".join(evaluations) + "\n",
    ]
    return "\n".join(sections)

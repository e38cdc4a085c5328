"""LoRA vs full fine-tuning at the real 7B sizes: trainable parameters, optimizer state and the memory of a training
step's persistent tensors, computed on the `meta` device (no weights, no GPU: every number is exact arithmetic on the
models `build_vlm` builds for `--stage finetune`).

    python -m benchmarks.lora_memory [--ranks 8 64 128] [--models dyva_siglip+7b dyva_siglip_qwen+7b]

Per model and setting: trainable parameters; AdamW state (exp_avg + exp_avg_sq, allocated by one real `AdamW.step`
on meta tensors); gradients and fp32 master weights of the trainable parameters; and the weights as the framework
stores them under mixed precision (frozen vision encoders in bf16, everything else in fp32, the LoRA base LLM
included). Activations are left out (they depend on the batch and checkpointing, and LoRA does not change them).
Writes benchmarks/results/lora_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1024**3


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(model_type: str, rank: int) -> dict[str, float | int | str]:
    """One setting's numbers (rank 0 = full fine-tuning of the finetune stage: projector + LLM)."""
    cfg = get_model_config(model_type)
    cfg.lora_rank = rank
    with torch.device("meta"):
        vlm = build_vlm(cfg, stage="finetune", load_weights=False)
        trainable = [p for p in vlm.parameters() if p.requires_grad]
        for param in trainable:
            param.grad = torch.zeros_like(param)
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=False)
        optimizer.step()  # allocates the state exactly as training does (on meta: shapes and dtypes only)
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim > 0]
    counts = vlm.parameter_counts()
    return {
        "model": model_type,
        "setting": "full fine-tuning" if rank == 0 else f"LoRA r={rank}",
        "total_parameters": sum(counts.values()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "optimizer_state_gib": _bytes(state) / GIB,
        "gradients_gib": _bytes(p.grad for p in trainable) / GIB,
        "weights_gib": _bytes(vlm.parameters()) / GIB,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "# LoRA vs full fine-tuning: trainable parameters and memory (meta device, `--stage finetune`)",
        "",
        "| model | setting | trainable parameters | % of all | AdamW state | gradients | weights (as stored) | total |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        total = row["optimizer_state_gib"] + row["gradients_gib"] + row["weights_gib"]
        share = 100 * row["trainable_parameters"] / row["total_parameters"]
        lines.append(
            f"| {row['model']} | {row['setting']} | {row['trainable_parameters']:,} | {share:.2f} | "
            f"{row['optimizer_state_gib']:.2f} GiB | {row['gradients_gib']:.2f} GiB | {row['weights_gib']:.2f} GiB | "
            f"{total:.2f} GiB |"
        )
    lines += ["", "Activations excluded; weights as stored under mixed precision (frozen vision encoders bf16, the rest "
              "fp32). One process: divide the sharded columns by the world size under FSDP2."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dyva_siglip+7b", "dyva_siglip_qwen+7b"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 64, 128])
    args = parser.parse_args(argv)
    rows = [measure(model, rank) for model in args.models for rank in (0, *args.ranks)]
    RESULTS.mkdir(exist_ok=True)
    payload = {"rows": rows, "torch": torch.__version__, "python": platform.python_version()}
    (RESULTS / "lora_memory.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "lora_memory.md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()

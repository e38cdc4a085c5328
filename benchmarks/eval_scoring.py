"""Benchmark 6: closed-form scoring (VSR-style True/False items) by the evaluation harness vs vlm-evaluation's way.

vlm-evaluation scores a closed-form item with `generate(..., output_scores=True, return_dict_in_generate=True)` at
batch size 1 and its default `max_new_tokens=128` (greedy, stopping at EOS), then reads the softmax of the first
step's scores. The harness runs one batched forward pass and reads the last position's logits
(`prismatic.eval.predict.candidate_probabilities`). Both are timed on the same DyVA-shaped model (SigLIP + SVD +
dual projector + Llama-family LLM at the benchmark dimensions) over the same items, images encoded on both sides.
Goal: harness items/s >= 5x vlm-evaluation's. Also reported: against the same generate path stopped after one token
(batch 1, `max_new_tokens=1`), which isolates what batching alone buys.

    python -m benchmarks.eval_scoring [--smoke] [--items N] [--batch_size B]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks import models
from benchmarks.harness import Comparison, argument_parser, measure, parse_settings, ratio_pair, write_results
from prismatic.eval.predict import candidate_probabilities, candidate_token_ids, wrap_prompts
from prismatic.eval.prompts import true_false_prompt
from prismatic.models.vlms.generation import normalize_inputs, prepare_pixel_values, splice_prompts, tokenize_prompts
from prismatic.models.vlms.prismatic import PrismaticVLM

NAME = "eval_scoring"
CANDIDATES = ("True", "False")
RELATIONS = ("behind", "on top of", "next to", "under", "left of", "facing", "near", "inside")


def items(count: int, size: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    messages = [true_false_prompt(f"The cat is {RELATIONS[i % len(RELATIONS)]} the dog.") for i in range(count)]
    return images, messages


def harness(vlm: PrismaticVLM, images: list[Image.Image], prompts: list[str], batch: int) -> Callable[[], Any]:
    def call() -> list[torch.Tensor]:
        return [candidate_probabilities(vlm, images[s : s + batch], prompts[s : s + batch], CANDIDATES)
                for s in range(0, len(prompts), batch)]  # fmt: skip

    return call


def generate_with_scores(
    vlm: PrismaticVLM, images: list[Image.Image], prompts: list[str], max_new_tokens: int
) -> Callable[[], Any]:
    """vlm-evaluation's path: per item, splice the image in and `generate(..., output_scores=True)`; the first step's
    softmax restricted to the candidates, renormalised."""
    llm_backbone = vlm.llm_backbone
    device = llm_backbone.llm.get_input_embeddings().weight.device
    ids = candidate_token_ids(llm_backbone.tokenizer, CANDIDATES)

    def call() -> list[torch.Tensor]:
        out = []
        for image, prompt in zip(images, prompts):
            rows, prompt_list = normalize_inputs(image, prompt)
            input_ids, mask = tokenize_prompts(llm_backbone, prompt_list)
            with torch.inference_mode():
                pixels, has_image = prepare_pixel_values(vlm, rows, device)
                spliced = splice_prompts(vlm, input_ids.to(device), mask.to(device), pixels, has_image)
                result = llm_backbone.llm.generate(
                    inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, do_sample=False,
                    max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True,
                    pad_token_id=llm_backbone.pad_token_id, eos_token_id=list(llm_backbone.eos_token_ids),
                )  # fmt: skip
            probabilities = torch.softmax(result.scores[0][0].float(), dim=-1)[ids]
            out.append(probabilities / probabilities.sum())
        return out

    return call


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None, help="items per call (default 16; smoke 4)")
    parser.add_argument("--batch_size", type=int, default=None, help="the harness's batch (default 8; smoke 2)")
    settings, args = parse_settings(parser, argv)
    device, dims = settings.device, models.dims_for(settings.smoke)
    count, batch = args.items or (4 if settings.smoke else 16), args.batch_size or (2 if settings.smoke else 8)
    vlm = models.dyva_vlm(dims).to(device).eval()
    images, messages = items(count, dims.image_size)
    prompts = wrap_prompts(vlm, messages)

    ours, peer = harness(vlm, images, prompts, batch)(), generate_with_scores(vlm, images, prompts, 128)()
    max_difference = max(float((a - b).abs().max()) for a, b in zip(torch.cat(ours), peer))
    candidates = {
        "harness": (f"candidate_probabilities, batch {batch}, {count} items", harness(vlm, images, prompts, batch)),
        "vlm_eval": (f"generate(output_scores=True), batch 1, max_new_tokens=128, {count} items",
                     generate_with_scores(vlm, images, prompts, 128)),
        "generate_1": (f"generate(output_scores=True), batch 1, max_new_tokens=1, {count} items",
                       generate_with_scores(vlm, images, prompts, 1)),
    }  # fmt: skip
    measured = measure(candidates, device, settings.warmup, settings.reps)
    for m in measured.values():
        m.extra["items_per_s"] = count / m.median_s

    def speedup(peer_name: str, goal: str | None, note: str) -> Comparison:
        wall, cpu = ratio_pair(lambda c: measured[peer_name].median(c) / measured["harness"].median(c), measured)
        return Comparison(f"closed-form scoring: harness vs {peer_name}", f"{peer_name} time / harness time "
                          "(= items/s ratio)", wall, goal, cpu_ratio=cpu, note=note)  # fmt: skip

    comparisons = [
        speedup("vlm_eval", ">= 5", f"{measured['harness'].extra['items_per_s']:.2f} vs "
                                    f"{measured['vlm_eval'].extra['items_per_s']:.2f} items/s"),
        speedup("generate_1", None, "what batching and skipping generate buy at one generated token"),
    ]
    notes = [
        f"Both sides give the same probabilities: max |difference| {max_difference:.2e} over {count} items.",
        "vlm-evaluation's generate runs until EOS or 128 tokens; the random-weight model rarely emits EOS, so this is "
        "close to its worst case. A trained model stopping after 1-3 tokens lies between the two peers.",
    ]
    write_results(NAME, "Closed-form scoring: the harness vs vlm-evaluation's generate-with-scores", settings.out,
                  device, {**settings.to_dict(), "items": count, "batch_size": batch}, dims.to_dict(),
                  list(measured.values()), comparisons, notes)  # fmt: skip
    return {"measurements": list(measured.values()), "comparisons": comparisons, "max_difference": max_difference}


if __name__ == "__main__":
    main()

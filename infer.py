"""infer.py: ask a trained VLM one question about an image (or several frames), as in the README.

    python infer.py --model runs/<run_id> --image assets/rocket.png --prompt "What is in the image?"
    python infer.py --model dyva_siglip_qwen+7b --image f0.png f1.png f2.png --prompt "Which way does it move?"

`--model` is a run directory written by scripts/pretrain.py or a released model id (`dyva_siglip+7b`,
`dyva_siglip_qwen+7b`; needs the hub or its cache). Several `--image` paths are frames: the SVD stream sees all of them
in its keyframe slots, the static encoder sees the first. Without the hub, `--vision_pretrained_path`, `--svd_model_id`
(`--svd_variant`) and `--llm_pretrained_path` point at local copies of SigLIP, SVD and the base LLM (`prismatic.load`);
`--video_model_id` / `--video_prompt_embeds` at a zoo video model's pipeline directory and empty-prompt file.

A missing model or image (or another user error) prints `error: <message>` and exits with status 2; `--debug` or
`DYVA_DEBUG=1` shows its traceback (`prismatic/util/cli.py`).
"""

import argparse
import os

import torch
from PIL import Image, UnidentifiedImageError

import prismatic  # `prismatic.load` resolves on first use, so `--help` imports no model code
from prismatic.util.cli import run_cli, user_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or released model id")
    parser.add_argument("--image", nargs="+", required=True, help="one image, or several frames in time order")
    parser.add_argument("--prompt", default="What is in the image and what is going on?")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--do_sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=0.4)
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--hf_token", default=os.environ.get("HF_TOKEN"), help="default: $HF_TOKEN")
    add_source_arguments(parser)
    return parser.parse_args(argv)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """`prismatic.load`'s weight-source keywords as flags (default: what the model's config says)."""
    parser.add_argument("--vision_pretrained_path", help="local static encoder (a timm save_for_hf directory)")
    parser.add_argument("--svd_model_id", help="SVD hub id or local diffusers directory")
    parser.add_argument("--svd_variant", help='SVD weight variant (released models: "fp16"; "" = full precision)')
    parser.add_argument("--llm_pretrained_path", help="local copy of the base LLM (config and tokenizer)")
    parser.add_argument("--video_model_id", help="a zoo video model's hub id or local diffusers pipeline directory")
    parser.add_argument("--video_prompt_embeds", help="its empty-prompt file (scripts/encode_empty_prompt.py)")


def source_keywords(args: argparse.Namespace) -> dict[str, str | None]:
    names = ("vision_pretrained_path", "svd_model_id", "svd_variant", "llm_pretrained_path", "video_model_id",
             "video_prompt_embeds")  # fmt: skip
    return {name: getattr(args, name) for name in names}


def main(argv: list[str] | None = None) -> str:
    """Answer `--prompt` about `--image`; returns the answer. The images are read before the model is loaded, so a
    mistyped path fails in a second; both are checked inside `user_errors()`."""
    args = parse_args(argv)
    with user_errors(UnidentifiedImageError):
        frames = [Image.open(path).convert("RGB") for path in args.image]
        vlm = prismatic.load(args.model, hf_token=args.hf_token, **source_keywords(args))
    vlm.to(args.device, dtype=getattr(torch, args.dtype))
    prompt_builder = vlm.get_prompt_builder()
    prompt_builder.add_turn(role="human", message=args.prompt)
    text = vlm.generate(
        frames[0] if len(frames) == 1 else frames,
        prompt_builder.get_prompt(),
        do_sample=args.do_sample,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        min_length=1,
        seed=args.seed,
    )
    print(f"Q: {args.prompt}\nA: {text}")
    return text


if __name__ == "__main__":
    run_cli(main)

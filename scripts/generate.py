"""generate.py: an interactive loop over images and questions with a trained VLM.

    python scripts/generate.py --model runs/<run_id>

Commands at the prompt: `image PATH [PATH ...]` sets the image (several paths = frames), `clear` starts a new
conversation with the same image, `quit` exits; anything else is a question. The conversation keeps its turns, so
follow-up questions see the earlier answers (multi-turn prompts in the model's own format). Without the hub,
`--vision_pretrained_path`, `--svd_model_id` (`--svd_variant`) and `--llm_pretrained_path` point at local copies of
SigLIP, SVD and the base LLM (the keywords of `prismatic.load`); `--video_model_id` and `--video_prompt_embeds` at a
zoo video model's pipeline directory and empty-prompt file.

A missing model or image (or another user error) prints `error: <message>` and exits with status 2; `--debug` or
`DYVA_DEBUG=1` shows its traceback (`prismatic/util/cli.py`). At the prompt, an `image` path that cannot be read prints
the error and keeps the session.
"""

import argparse
import os
import shlex
import sys

import torch
from PIL import Image, UnidentifiedImageError

import prismatic  # `prismatic.load` resolves on first use, so `--help` imports no model code
from prismatic.util.cli import UserError, run_cli, user_errors


def open_frames(paths: list[str]) -> list[Image.Image]:
    """The images at `paths` as RGB; a missing or unreadable file is a UserError."""
    with user_errors(UnidentifiedImageError):
        return [Image.open(path).convert("RGB") for path in paths]


def main(argv: list[str] | None = None) -> None:
    """Load the model, then answer questions typed at the prompt until `quit` or end of input."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or released model id")
    parser.add_argument("--image", nargs="*", default=[], help="initial image or frames")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--hf_token", default=os.environ.get("HF_TOKEN"))
    sources = ("vision_pretrained_path", "svd_model_id", "svd_variant", "llm_pretrained_path", "video_model_id",
               "video_prompt_embeds")  # fmt: skip
    for name in sources:
        parser.add_argument(f"--{name}", help="see prismatic.load (default: what the model's config says)")
    args = parser.parse_args(argv)

    frames = open_frames(args.image)
    with user_errors():
        vlm = prismatic.load(args.model, hf_token=args.hf_token, **{name: getattr(args, name) for name in sources})
    vlm.to(args.device, dtype=getattr(torch, args.dtype))
    builder = vlm.get_prompt_builder()
    print("Commands: `image PATH [PATH ...]`, `clear`, `quit`; anything else is a question.")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if line in ("quit", "exit"):
            break
        if line == "clear":
            builder = vlm.get_prompt_builder()
            continue
        if line.startswith("image "):
            try:
                frames = open_frames(shlex.split(line)[1:])
            except UserError as error:  # a mistyped path ends the command, not the session
                print(f"error: {error}", file=sys.stderr, flush=True)
                continue
            builder = vlm.get_prompt_builder()
            print(f"{len(frames)} frame(s) loaded; new conversation.")
            continue
        if not line:
            continue
        builder.add_turn(role="human", message=line)
        images = None if not frames else frames[0] if len(frames) == 1 else frames
        answer = vlm.generate(images, builder.get_prompt(), do_sample=args.temperature > 0,
                              temperature=max(args.temperature, 1e-5), max_new_tokens=args.max_new_tokens)  # fmt: skip
        builder.add_turn(role="gpt", message=answer)
        print(answer)


if __name__ == "__main__":
    run_cli(main)

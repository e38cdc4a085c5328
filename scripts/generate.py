"""generate.py: an interactive loop over images and questions with a trained VLM.

    python scripts/generate.py --model runs/<run_id>

Commands at the prompt: `image PATH [PATH ...]` sets the image (several paths = frames), `clear` starts a new
conversation with the same image, `quit` exits; anything else is a question. The conversation keeps its turns, so
follow-up questions see the earlier answers (multi-turn prompts in the model's own format). Without the hub,
`--vision_pretrained_path`, `--svd_model_id` (`--svd_variant`) and `--llm_pretrained_path` point at local copies of
SigLIP, SVD and the base LLM (the keywords of `prismatic.load`); `--video_model_id` and `--video_prompt_embeds` at a
zoo video model's pipeline directory and empty-prompt file.
"""

import argparse
import os
import shlex

import torch
from PIL import Image

import prismatic  # `prismatic.load` resolves on first use, so `--help` imports no model code


def main() -> None:
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
    args = parser.parse_args()

    vlm = prismatic.load(args.model, hf_token=args.hf_token, **{name: getattr(args, name) for name in sources})
    vlm.to(args.device, dtype=getattr(torch, args.dtype))
    frames = [Image.open(p).convert("RGB") for p in args.image]
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
            frames = [Image.open(p).convert("RGB") for p in shlex.split(line)[1:]]
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
    main()

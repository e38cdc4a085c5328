"""
encode_empty_prompt.py

Run a video model's real text encoder once on the empty prompt and store the embedding, so the DiT generative encoders
(CogVideoX, Wan, LTX-Video) never load T5-XXL / UMT5-XXL (4.7-5.7B parameters) at training or inference time. The
encoder conditions every denoiser call on this embedding; its provenance and digest enter the feature-cache
fingerprint, so features computed with another embedding are never reused.

    python scripts/encode_empty_prompt.py --family cogvideox --model_id THUDM/CogVideoX1.5-5B-I2V \
      --out prompts/cogvideox15-empty.safetensors
    python scripts/pretrain.py --model.type dyva-cogvideox_siglip+7b \
      --model.video_prompt_embeds prompts/cogvideox15-empty.safetensors ...

With `--out` omitted and a local model directory, the file goes to `<model_id>/empty_prompt_embeds.safetensors`, where
the encoder finds it without the flag. Runs on CPU in float32 (a few minutes for T5-XXL; needs ~20 GB of RAM).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prismatic.models.backbones.vision.registry import VIDEO_KINDS, generative_encoder_class
from prismatic.models.backbones.vision.video_prompt import PROMPT_FILE, save_prompt_embedding
from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True, choices=VIDEO_KINDS, help="the video model family")
    parser.add_argument("--model_id", required=True, help="hub id or local diffusers pipeline directory")
    parser.add_argument("--variant", default=None, help="diffusers weight variant of the text encoder, e.g. fp16")
    parser.add_argument("--out", default=None, help=f"output file (default: <model_id>/{PROMPT_FILE} for a local dir)")
    return parser.parse_args(argv)


def output_path(model_id: str, out: str | None) -> Path:
    if out is not None:
        return Path(out)
    if not Path(model_id).is_dir():
        raise ValueError(f"{model_id!r} is a hub id, not a local directory: pass --out FILE for the embedding.")
    return Path(model_id) / PROMPT_FILE


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    path = output_path(args.model_id, args.out)
    encoder_cls = generative_encoder_class(args.family)
    overwatch.info(f"Encoding the empty prompt with {args.model_id}'s text encoder (family {args.family})")
    embedding = encoder_cls.encode_empty_prompt(args.model_id, args.variant)
    save_prompt_embedding(path, embedding)
    overwatch.info(f"Wrote {tuple(embedding.embeds.shape)} prompt embedding to {path} (sha256 {embedding.sha256[:16]})")
    return path


if __name__ == "__main__":
    main()

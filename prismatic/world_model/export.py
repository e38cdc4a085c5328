"""After training: the full diffusers SVD directory, and sample clips generated from it by the real pipeline.

`export_world_model` writes `<run_dir>/world_model/` (vae with its decoder, unet, image_encoder, feature_extractor,
scheduler, model_index.json) through `save_svd_components`, so `StableVideoDiffusionPipeline.from_pretrained(DIR)` loads
it and the VLM takes it as `--model.svd_model_id DIR` (`SVDEncoderConfig(model_id=DIR)`). Under FSDP2 the U-Net is
sharded, so its gathered weights go into an unsharded copy built from its config on the meta device.

`write_samples` ("it shows its work"): for held-out first frames, `StableVideoDiffusionPipeline` built from the
exported directory generates clips with a fixed generator; each becomes a GIF, and all of them one PNG strip (rows =
samples, columns = frames), in `<run_dir>/samples/`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from PIL import Image

from prismatic.models.backbones.vision.svd_components import SVDComponents, save_svd_components
from prismatic.overwatch import initialize_overwatch
from prismatic.util.distributed import DistributedContext
from prismatic.world_model.parallel import ParallelObjective

overwatch = initialize_overwatch(__name__)

WORLD_MODEL_DIR = "world_model"
SAMPLES_DIR = "samples"
STRIP_FILE = "samples.png"


def _unsharded_unet(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    with torch.device("meta"):
        copy = type(unet).from_config(unet.config)  # type: ignore[attr-defined]
    copy.load_state_dict(state, assign=True)
    return copy.eval()


def export_world_model(parallel: ParallelObjective, components: SVDComponents, run_dir: Path,
                       ctx: DistributedContext) -> Path:  # fmt: skip
    """Collective: write the trained SVD as a diffusers directory from rank 0; returns its path."""
    directory = Path(run_dir) / WORLD_MODEL_DIR
    unet = parallel.objective.unet
    if parallel.strategy == "fsdp":
        state = parallel.full_unet_state()  # collective; with cpu_offload only rank 0 receives the tensors
        unet = _unsharded_unet(unet, state) if ctx.is_rank_zero else unet
    if ctx.is_rank_zero:
        exported = dataclasses.replace(components, unet=unet)
        save_svd_components(exported, directory)
        overwatch.info(f"Exported the world model (diffusers layout) to {directory}")
    ctx.barrier()
    return directory


def frames_to_images(frames: torch.Tensor) -> list[Image.Image]:
    """uint8 [T, 3, H, W] -> T RGB images."""
    return [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in frames]


def strip(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of equally sized frames as one image (rows = samples, columns = frames)."""
    width, height = rows[0][0].size
    canvas = Image.new("RGB", (width * max(len(row) for row in rows), height * len(rows)))
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            canvas.paste(frame, (c * width, r * height))
    return canvas


def write_samples(model_dir: Path, first_frames: list[Image.Image], output: Path, *, num_frames: int,
                  image_size: int, steps: int, seed: int, fps: int, motion_bucket_id: int) -> list[Path]:  # fmt: skip
    """Generate one clip per first frame with the diffusers pipeline; GIFs plus `samples.png` (conditioning frame in
    the first column). Returns the written files."""
    from diffusers import StableVideoDiffusionPipeline

    pipeline = StableVideoDiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    output.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for index, image in enumerate(first_frames):
        generator = torch.Generator().manual_seed(seed + index)
        frames = pipeline(image, height=image_size, width=image_size, num_frames=num_frames,
                          num_inference_steps=steps, fps=fps, motion_bucket_id=motion_bucket_id,
                          decode_chunk_size=num_frames, generator=generator, output_type="pil").frames[0]  # fmt: skip
        path = output / f"sample-{index:02d}.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // max(fps, 1), loop=0)
        written.append(path)
        rows.append([image.resize(frames[0].size), *frames])
    if rows:
        strip(rows).save(output / STRIP_FILE)
        written.append(output / STRIP_FILE)
    overwatch.info(f"Wrote {len(first_frames)} sample clip(s) ({steps} sampling steps) to {output}")
    return written

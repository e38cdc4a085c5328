"""The autoencoder phase of a world model trained from scratch: train the VAE on the clips before the U-Net.

A tiny SVD built with random weights (`--svd_model_id tiny`) has a VAE whose decoder cannot decode, so the clips the
trained U-Net generates come out as noise. With `--autoencoder_steps N` the training script first trains the VAE
(encoder, `quant_conv` and temporal decoder) as a KL autoencoder on the training clips' frames, as Stable Diffusion's
first stage was trained (without its LPIPS and GAN terms):

- a batch is `batch_size` clips, flattened to their B x T frames in [-1, 1]; they are encoded, a posterior sample is
  drawn (seeded generator) and decoded *as clips* (`decode(z, num_frames=T)`): the temporal decoder's time
  convolutions mix neighbouring frames, and the diffusers pipeline decodes T frames at once, so training on single
  frames would leave the temporal taps the pipeline uses untrained;
- loss = mean |x_hat - x| + kl_weight x KL(posterior || N(0, I)) summed over a frame's latent and divided by the
  frame's pixel count: SD's per-image sums, read per pixel, so `kl_weight` keeps SD's meaning (1e-6 there);
- AdamW with the run's schedule type; the data order is the seeded epoch permutation of `batches.epoch_order`.

Then `scaling_factor` (in the VAE's config, so the exported diffusers directory carries it) becomes 1 / std of the
trained posterior latents (samples, or modes with `clean_latents=mode`) of the first `SCALE_BATCHES` batches of
training clips in index order: how Stable Diffusion chose 0.18215, so the U-Net's clean latents have unit variance.

The trained VAE is saved to `<run_dir>/autoencoder/` (`save_pretrained` into a temporary folder, renamed once
complete; with `autoencoder.json`: the settings, the latent std, the first and last reconstruction loss; and
`metrics.jsonl`: one line per step). A run that finds the folder loads it instead of training again (`--resume auto`,
or a rerun of the same run id). Under DDP / FSDP every rank trains identically (same seeds, same data), only rank 0
saves, and every rank then loads rank 0's copy, so the frozen VAE is the same everywhere even where GPU kernels are
not deterministic. The phase runs in fp32 and leaves the global RNG as it found it, so the U-Net phase starts from the
same state whether the VAE was trained now, loaded, or not trained at all.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKLTemporalDecoder
from torch.utils.data import DataLoader
from tqdm import tqdm

from prismatic.models.backbones.vision.svd_unet import to_signed_unit
from prismatic.overwatch import initialize_overwatch
from prismatic.training.optimizer import adamw, build_scheduler
from prismatic.training.options import LRSchedulerType
from prismatic.util.distributed import DistributedContext
from prismatic.util.io import write_json_atomic
from prismatic.world_model.batches import ClipsWithFps, collate_clips, epoch_order

overwatch = initialize_overwatch(__name__)

AUTOENCODER_DIR = "autoencoder"
TMP_AUTOENCODER_DIR = ".tmp-autoencoder"
STATE_FILE = "autoencoder.json"
METRICS_FILE = "metrics.jsonl"
SCALE_BATCHES = 4  # batches of training clips whose latents set the scaling factor


@dataclass(frozen=True)
class AutoencoderOptions:
    steps: int
    learning_rate: float
    kl_weight: float
    batch_size: int  # clips per step (flattened to frames)
    seed: int
    lr_scheduler_type: LRSchedulerType = "linear-warmup+cosine-decay"
    warmup_ratio: float = 0.03
    sample_latents: bool = True  # scaling factor from posterior samples (clean_latents=sample) or modes
    # False: train only the decoder, on the frozen encoder's latents (no KL term, scaling factor unchanged): the latent
    # space, and so everything the U-Net and the VLM's feature pass compute, stays that of the given VAE.
    train_encoder: bool = True
    num_workers: int = 0

    def settings(self) -> dict:
        """What a saved autoencoder must have been trained with to be reused (num_workers changes nothing)."""
        return {key: value for key, value in asdict(self).items() if key != "num_workers"}


class AutoencoderLoss(NamedTuple):
    loss: torch.Tensor  # what is minimised
    recon: torch.Tensor  # mean |x_hat - x| per pixel, in [-1, 1] units
    kl: torch.Tensor  # mean over frames of the KL summed over a frame's latent


def flatten_frames(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 clips [B, T, 3, H, W] -> frames in [-1, 1] [B * T, 3, H, W] (clip-major, as the decoder reshapes)."""
    return to_signed_unit(frames.to(device).flatten(0, 1))


def autoencoder_loss(vae: AutoencoderKLTemporalDecoder, frames: torch.Tensor, generator: torch.Generator,
                     kl_weight: float) -> AutoencoderLoss:  # fmt: skip
    """The loss of a batch of uint8 clips [B, T, 3, H, W] (see the module docstring)."""
    num_frames = frames.shape[1]
    pixels = flatten_frames(frames, generator.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and vae.encoder.conv_in.weight.requires_grad):
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents, num_frames=num_frames).sample
    recon = (reconstruction.float() - pixels).abs().mean()
    kl = posterior.kl().float().mean()
    return AutoencoderLoss(recon + kl_weight * kl / pixels[0].numel(), recon, kl)


def batch_order(num_clips: int, batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """Clip indices of each step: consecutive slices of the seeded epoch permutations (the tail is dropped)."""
    per_epoch = num_clips // batch_size
    if per_epoch == 0:
        raise ValueError(f"{num_clips} training clips cannot fill one autoencoder batch of {batch_size} clips; lower "
                         "--autoencoder_batch_size (default: --per_device_batch_size) or add clips.")  # fmt: skip
    order, batches = [], []
    for step in range(steps):
        epoch, index = divmod(step, per_epoch)
        if index == 0:
            order = epoch_order(num_clips, seed, epoch)
        batches.append(order[index * batch_size : (index + 1) * batch_size])
    return batches


def train_autoencoder(vae: AutoencoderKLTemporalDecoder, clips: ClipsWithFps, options: AutoencoderOptions,
                      device: torch.device, show_progress: bool = True) -> list[dict[str, float]]:  # fmt: skip
    """Train the VAE in place for `options.steps` steps (every parameter, or the decoder's only); returns one metrics
    row per step."""
    vae.to(device).train().requires_grad_(True)
    if not options.train_encoder:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = adamw([{"params": trained, "lr": options.learning_rate, "weight_decay": 0.0}])
    scheduler = build_scheduler(optimizer, options.lr_scheduler_type, options.steps, options.warmup_ratio)
    generator = torch.Generator(device=device).manual_seed(options.seed)
    order = batch_order(len(clips), options.batch_size, options.seed, options.steps)
    loader = DataLoader(clips, batch_sampler=order, collate_fn=collate_clips, num_workers=options.num_workers)
    rows = []
    with tqdm(total=options.steps, desc="autoencoder", unit="step", disable=not show_progress) as bar:
        for step, batch in enumerate(loader, start=1):
            lr = float(optimizer.param_groups[0]["lr"])
            result = autoencoder_loss(vae, batch["frames"], generator, options.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            optimizer.step()
            scheduler.step()
            rows.append({"step": step, "loss": result.loss.item(), "recon_l1": result.recon.item(),
                         "kl": result.kl.item(), "lr": lr})  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", kl=f"{rows[-1]['kl']:.3g}", refresh=False)
    vae.eval().requires_grad_(False)
    return rows


@torch.no_grad()
def latent_std(vae: AutoencoderKLTemporalDecoder, clips: ClipsWithFps, batch_size: int, seed: int,
               sample: bool, device: torch.device) -> float:  # fmt: skip
    """Std over all elements of the posterior latents (samples or modes) of the first `SCALE_BATCHES` batches of
    clips in index order; the posterior noise comes from one generator seeded with `seed`, batch after batch."""
    vae.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    count = min(len(clips), SCALE_BATCHES * batch_size)
    latents = []
    for start in range(0, count, batch_size):
        frames = collate_clips([clips[i] for i in range(start, min(start + batch_size, count))])["frames"]
        posterior = vae.encode(flatten_frames(frames, device)).latent_dist
        latents.append((posterior.sample(generator=generator) if sample else posterior.mode()).double().flatten())
    return float(torch.cat(latents).std())


def set_scaling_factor(vae: AutoencoderKLTemporalDecoder, std: float) -> float:
    """Write 1 / std into the VAE's config (what the objective reads and `save_pretrained` writes); returns it."""
    if not std > 0:
        raise ValueError(f"The trained VAE's latents have std {std}; the autoencoder collapsed. Lower "
                         "--autoencoder_learning_rate or raise --autoencoder_steps.")  # fmt: skip
    factor = 1.0 / std
    vae.register_to_config(scaling_factor=factor)
    return factor


def save_autoencoder(vae: AutoencoderKLTemporalDecoder, directory: Path, state: dict,
                     rows: list[dict[str, float]]) -> None:  # fmt: skip
    """Write the VAE, its state and its metrics into a temporary sibling, then rename it to `directory`."""
    tmp = directory.parent / TMP_AUTOENCODER_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(directory, ignore_errors=True)  # an incomplete folder someone else left (ours appear complete)
    vae.save_pretrained(tmp, safe_serialization=True)
    (tmp / METRICS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_json_atomic(tmp / STATE_FILE, state, indent=1)
    os.replace(tmp, directory)


def load_autoencoder(directory: Path) -> AutoencoderKLTemporalDecoder:
    vae = AutoencoderKLTemporalDecoder.from_pretrained(directory, torch_dtype=torch.float32)
    return vae.eval().requires_grad_(False)


def check_saved_settings(directory: Path, options: AutoencoderOptions) -> dict:
    """The saved autoencoder's state, after checking it was trained with these options."""
    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("settings") != options.settings():
        raise ValueError(f"{directory} was trained with {state.get('settings')}, not {options.settings()}; pass the "
                         f"original autoencoder options (and batch size / seed) to reuse it, or delete {directory} "
                         "to train it again (and start the U-Net afresh: its checkpoints assume that VAE).")  # fmt: skip
    return state


def prepare_autoencoder(vae: AutoencoderKLTemporalDecoder, clips: ClipsWithFps, options: AutoencoderOptions,
                        run_dir: Path, ctx: DistributedContext) -> AutoencoderKLTemporalDecoder:  # fmt: skip
    """Collective. The VAE the U-Net phase uses: `vae` itself when the phase is off, else the one saved in
    `<run_dir>/autoencoder/` (trained and saved now unless an earlier run of this run directory saved it)."""
    directory = Path(run_dir) / AUTOENCODER_DIR
    found = (directory / STATE_FILE).is_file()
    if options.steps == 0:
        if found:
            raise ValueError(f"{directory} holds a VAE trained by an earlier run with --autoencoder_steps, and this "
                             "run's U-Net checkpoints may depend on it; pass the same --autoencoder_steps (and "
                             "autoencoder options) or use another --run_id.")  # fmt: skip
        return vae
    ctx.barrier()  # every rank has looked for the folder before rank 0 may write it
    if found:
        state = check_saved_settings(directory, options)
        overwatch.info(f"Loaded the trained autoencoder from {directory} (not training it again): reconstruction L1 "
                       f"{state['last_recon_l1']:.4f}, scaling_factor {state['scaling_factor']:.5g}")  # fmt: skip
        return load_autoencoder(directory)
    with torch.random.fork_rng(devices=[]):  # the DataLoader draws its base seed from the global RNG
        rows = train_autoencoder(vae, clips, options, ctx.device, show_progress=ctx.is_rank_zero)
    std = latent_std(vae, clips, options.batch_size, options.seed, options.sample_latents, ctx.device)
    # Decoder only: the latent space is the given VAE's, and so is its scaling factor.
    factor = set_scaling_factor(vae, std) if options.train_encoder else float(vae.config.scaling_factor)
    state = {"settings": options.settings(), "latent_std": std, "scaling_factor": factor,
             "first_recon_l1": rows[0]["recon_l1"], "last_recon_l1": rows[-1]["recon_l1"]}  # fmt: skip
    overwatch.info(f"Autoencoder: reconstruction L1 {rows[0]['recon_l1']:.4f} -> {rows[-1]['recon_l1']:.4f} in "
                   f"{options.steps} steps; latent std {std:.4g}, scaling_factor {factor:.5g}")  # fmt: skip
    if ctx.is_rank_zero:
        save_autoencoder(vae.cpu(), directory, state, rows)
    ctx.barrier()
    return load_autoencoder(directory)  # on every rank: the U-Net phase then sees exactly rank 0's saved VAE

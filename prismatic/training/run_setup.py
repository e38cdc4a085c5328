"""Run-directory bookkeeping: the Hugging Face token (resolved, never stored), run ids, the saved config, and the
empty-prompt embedding a video-model stream conditions on (copied into the run, so the run never depends on it
staying elsewhere).

`hf_token` in a config names WHERE the token is (an environment variable or a file), never the token itself, so the
config can be saved and tracked as is. `save_run_config` writes the resolved config as `config.yaml` (readable, and
reusable with `--config_path`) and `config.json` (what `prismatic.load()` reads to rebuild the model), after checking
that the token value appears nowhere in it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import draccus

from prismatic.models.backbones.vision.registry import VIDEO_KINDS, VISION_BACKBONES, resolve_vision_backbone_id
from prismatic.models.backbones.vision.video_prompt import PROMPT_FILE
from prismatic.overwatch import initialize_overwatch
from prismatic.util.io import write_text_atomic

overwatch = initialize_overwatch(__name__)

CONFIG_YAML = "config.yaml"
CONFIG_JSON = "config.json"
# Hugging Face user access tokens start with this prefix; a config value that does is a token pasted by mistake.
HF_TOKEN_PREFIX = "hf_"


def check_hf_token_reference(hf_token: str | None) -> None:
    """Reject a token pasted into the config (it would be saved with the run)."""
    if hf_token and hf_token.startswith(HF_TOKEN_PREFIX) and hf_token not in os.environ:
        raise ValueError(
            "--hf_token looks like a token itself; pass the NAME of an environment variable holding it (e.g. "
            "--hf_token HF_TOKEN) or a path to a file containing it, so the token is never written to the run."
        )


def resolve_hf_token(hf_token: str | None) -> str | None:
    """The token named by `hf_token`: an environment variable of that name, else a file at that path, else None
    (public models need none; gated ones then fail with the hub's own message)."""
    check_hf_token_reference(hf_token)
    if not hf_token:
        return None
    if os.environ.get(hf_token):
        return os.environ[hf_token].strip()
    path = Path(hf_token).expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    overwatch.info(f"hf_token: no environment variable or file named {hf_token!r}; continuing without a token")
    return None


def default_run_id(dataset_id: str, model_id: str, stage: str, seed: int) -> str:
    """prismatic-vlms' naming: `<dataset>+<model>+stage-<stage>+x<seed>`."""
    return f"{dataset_id}+{model_id}+stage-{stage}+x{seed}"


def encode_config(config: Any) -> dict[str, Any]:
    """The config as plain JSON-able values (choice types carry their registered `type`)."""
    return json.loads(json.dumps(draccus.encode(config), default=str))


def assert_no_secret(payload: str, secret: str | None, where: str) -> None:
    if secret and secret in payload:
        raise RuntimeError(f"Refusing to write the Hugging Face token into {where}; pass it by env var or file name.")


def save_run_config(config: Any, run_dir: Path, secret: str | None) -> dict[str, Any]:
    """Write `config.yaml` and `config.json` into `run_dir` (call on rank 0); returns the encoded config."""
    encoded = encode_config(config)
    yaml_text = io.StringIO()
    draccus.dump(config, yaml_text)
    files = {CONFIG_JSON: json.dumps(encoded, indent=2) + "\n", CONFIG_YAML: yaml_text.getvalue()}
    for name, payload in files.items():
        assert_no_secret(payload, secret, str(run_dir / name))
    for name, payload in files.items():
        write_text_atomic(run_dir / name, payload)
    return encoded


def bundle_prompt_embedding(model_cfg: Any, run_dir: Path, copy: bool) -> None:
    """Copy a video-model stream's empty-prompt file (`--model.video_prompt_embeds`, or the one inside a local
    `--model.video_model_id`) into the run directory and point the config at the copy, so the saved config, the run
    and `prismatic.load(run_dir)` keep working when the original moves. `copy` on one rank only; every rank gets the
    same path. Nothing to do without a video stream, or for tiny random encoders and hub ids without a file (the
    encoder then uses its seeded embedding, or stops with the command that writes one)."""
    spec = VISION_BACKBONES[resolve_vision_backbone_id(model_cfg.vision_backbone_id)]
    if spec.generative not in VIDEO_KINDS:
        return
    source = model_cfg.video_prompt_embeds
    if source is None:
        local = Path(model_cfg.video_model_id) / PROMPT_FILE if model_cfg.video_model_id else None
        if local is None or not local.is_file():
            return
        source = str(local)
    target = run_dir / PROMPT_FILE
    if Path(source).resolve() != target.resolve():
        if not Path(source).is_file():
            raise FileNotFoundError(
                f"--model.video_prompt_embeds {source} does not exist; write it with scripts/encode_empty_prompt.py."
            )
        if copy:
            shutil.copyfile(source, target)
    model_cfg.video_prompt_embeds = str(target)

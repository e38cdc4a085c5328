"""Run-directory bookkeeping: the Hugging Face token (resolved, never stored), run ids, and the saved config.

`hf_token` in a config names WHERE the token is (an environment variable or a file), never the token itself, so the
config can be saved and tracked as is. `save_run_config` writes the resolved config as `config.yaml` (readable, and
reusable with `--config_path`) and `config.json` (what `prismatic.load()` reads to rebuild the model), after checking
that the token value appears nowhere in it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import draccus

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

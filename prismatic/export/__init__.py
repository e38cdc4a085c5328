"""Exporting a trained model to one shareable directory, and uploading it to the Hugging Face hub.

`export_model(source, out, format, options)` dispatches on the format name through `EXPORT_FORMATS`, a dict from a
format to the dotted path of its function `(source: Path, out: Path, options: ExportOptions) -> Path` (imported only
when used, so a format may live in a package with heavier dependencies); adding a format is one entry there.
`native` (`prismatic/export/native.py`) writes the directory `prismatic.load()` reads with nothing else on disk;
`llava` and `hf-auto` (`prismatic/export/hf_formats.py`) the Hugging Face formats of docs/hf_formats.md.
`push_to_hub(folder, repo_id)` uploads a directory as it is, through `huggingface_hub.upload_folder`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from prismatic.export.native import ExportOptions

__all__ = ["EXPORT_FORMATS", "ExportOptions", "export_model", "push_to_hub"]

ExportFunction = Callable[[Path, Path, ExportOptions], Path]

EXPORT_FORMATS: dict[str, str] = {
    "native": "prismatic.export.native:export_native",
    "llava": "prismatic.export.hf_formats:export_llava_format",
    "hf-auto": "prismatic.export.hf_formats:export_hf_auto_format",
}


def export_function(name: str) -> ExportFunction:
    """The function of export format `name`; a ValueError listing the formats for an unknown or unavailable one."""
    if name not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {name!r}; available formats: {', '.join(sorted(EXPORT_FORMATS))}.")
    module_name, function_name = EXPORT_FORMATS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"Export format {name!r} needs {module_name}, which cannot be imported here ({error}); reinstall the "
            "package (`pip install -e .`) or pick another --format."
        ) from error
    return getattr(module, function_name)


def export_model(
    source: str | Path, out: str | Path, format: str = "native", options: ExportOptions | None = None
) -> Path:
    """Export the model in `source` (a run directory or a released-layout directory) to the directory `out`."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} is not a directory: pass a run directory (config.json + model.safetensors) or a local copy of a "
            "released model's folder (config.json + checkpoints/latest-checkpoint.pt)."
        )
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ValueError(f"The output {out} lies inside the source {source}: pick a directory outside it.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory: remove it or pick another output.")
    function = export_function(format)
    return function(source, out, options or ExportOptions())


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the model repo `repo_id` if needed and upload `folder` to it as one commit; returns the repo's URL."""
    import huggingface_hub

    repo = huggingface_hub.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    huggingface_hub.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", token=token,
                                  commit_message=f"Upload {Path(folder).name} (dyva-worldlm export)")  # fmt: skip
    return str(repo)

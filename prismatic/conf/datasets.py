"""Dataset configs (draccus `ChoiceRegistry`): where each stage's LLaVA-format JSON and images live.

Each config names two components per stage, `(json_file, image_dir)`, relative to `dataset_root_dir` (an absolute path
in a component is used as is). Image paths inside the JSON are relative to `image_dir`.

Registered ids:
- `llava-svd` (and `llava_svd`, the spelling of the authors' README): the released layout, LLaVA-1.5's 558k captions
  for the align stage and the 665k instruction mix for finetuning, under `LLaVA-Pretrain/` and `LLaVA-FT/`.
- `llava-v15`: the same two files in prismatic-vlms' folder names (`download/...`, the 558k file as `chat.json`).
- `llava-custom`: any LLaVA-format JSON and image folder; set both with `--dataset.finetune_stage_components` (and
  `--dataset.align_stage_components` for an align stage).
- `demo-world`: the train split of the embedded dynamics world of `make demo` (in the demo cache directory, see
  `prismatic.demo.default_cache_dir`), generated on first use by `prepare()` (deterministic, about a minute).

`scripts/preprocess.py --help` shows the expected trees and builds them from local downloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from draccus import ChoiceRegistry

from prismatic.demo.dataset import DEMO_WORLD_SIZES, build_demo_dataset, default_cache_dir
from prismatic.models.stages import Stage

# LLaVA-1.5's file names, as published (liuhaotian/LLaVA-Pretrain and liuhaotian/LLaVA-Instruct-150K).
LLAVA_ALIGN_JSON = "blip_laion_cc_sbu_558k.json"
LLAVA_FINETUNE_JSON = "llava_v1_5_mix665k.json"


@dataclass
class DatasetConfig(ChoiceRegistry):
    # Unique identifier of the dataset (used in run names and logs).
    dataset_id: str
    # Align stage: (caption JSON, image dir), relative to `dataset_root_dir`.
    align_stage_components: tuple[Path, Path]
    # Finetune stages: (conversation JSON, image dir), relative to `dataset_root_dir`.
    finetune_stage_components: tuple[Path, Path]
    # Root that the components are resolved against.
    dataset_root_dir: Path

    @property
    def prepares_itself(self) -> bool:
        """Whether `prepare()` creates the data (so a missing file before it is no error)."""
        return False

    def prepare(self) -> None:
        """Create the data where it is generated rather than downloaded (call on one process; others wait)."""

    def components(self, stage: Stage | str) -> tuple[Path, Path]:
        """The resolved (json_file, image_dir) of a stage; every stage but `align` reads the finetune components."""
        is_align = Stage(stage).recipe is Stage.ALIGN
        json_file, image_dir = self.align_stage_components if is_align else self.finetune_stage_components
        return Path(self.dataset_root_dir) / json_file, Path(self.dataset_root_dir) / image_dir


@dataclass
class LLaVA_SVD_Config(DatasetConfig):
    """The released DyVA layout: LLaVA-1.5 558k (align) and 665k mix (finetune) in LLaVA's own folder names."""

    dataset_id: str = "llava-svd"
    align_stage_components: tuple[Path, Path] = (
        Path("LLaVA-Pretrain") / LLAVA_ALIGN_JSON,
        Path("LLaVA-Pretrain/images"),
    )
    finetune_stage_components: tuple[Path, Path] = (
        Path("LLaVA-FT") / LLAVA_FINETUNE_JSON,
        Path("LLaVA-FT"),
    )
    dataset_root_dir: Path = Path("data")


@dataclass
class LLaVA_SVD_Underscore_Config(LLaVA_SVD_Config):
    """`llava_svd`: the README's spelling of `llava-svd` (same values). A subclass rather than a second registration
    of the same class, so a saved config.yaml writes back the spelling the user chose."""


@dataclass
class LLaVa_V15_Config(DatasetConfig):
    """The same LLaVA-1.5 files in prismatic-vlms' folder names (the 558k file renamed `chat.json`)."""

    dataset_id: str = "llava-v15"
    align_stage_components: tuple[Path, Path] = (
        Path("download/llava-laion-cc-sbu-558k/chat.json"),
        Path("download/llava-laion-cc-sbu-558k"),
    )
    finetune_stage_components: tuple[Path, Path] = (
        Path("download/llava-v1.5-instruct") / LLAVA_FINETUNE_JSON,
        Path("download/llava-v1.5-instruct"),
    )
    dataset_root_dir: Path = Path("data")


@dataclass
class LLaVA_Custom_Config(DatasetConfig):
    """Any LLaVA-format data: point both components at your JSON and image folder (absolute paths work too)."""

    dataset_id: str = "llava-custom"
    align_stage_components: tuple[Path, Path] = (Path("custom/align.json"), Path("custom/images"))
    finetune_stage_components: tuple[Path, Path] = (Path("custom/finetune.json"), Path("custom/images"))
    dataset_root_dir: Path = Path("data")


@dataclass
class DemoWorldConfig(DatasetConfig):
    """The embedded dynamics world (single-image scenes and 2-4 frame motion clips), generated on first use."""

    dataset_id: str = "demo-world"
    # The demo world has conversations only (no caption data): an align stage reads them too.
    align_stage_components: tuple[Path, Path] = (Path("train.json"), Path("."))
    finetune_stage_components: tuple[Path, Path] = (Path("train.json"), Path("."))
    dataset_root_dir: Path = field(default_factory=default_cache_dir)

    @property
    def prepares_itself(self) -> bool:
        return True

    def prepare(self) -> None:
        build_demo_dataset(self.dataset_root_dir, **DEMO_WORLD_SIZES)  # reuses an existing build of the same world


DATASET_CONFIGS: dict[str, type[DatasetConfig]] = {
    "llava-svd": LLaVA_SVD_Config,
    "llava_svd": LLaVA_SVD_Underscore_Config,
    "llava-v15": LLaVa_V15_Config,
    "llava-custom": LLaVA_Custom_Config,
    "demo-world": DemoWorldConfig,
}

for _name, _cls in DATASET_CONFIGS.items():
    DatasetConfig.register_subclass(_name, _cls)


def get_dataset_config(dataset_id: str) -> DatasetConfig:
    """A default-valued config by registry id (either spelling of `llava-svd`)."""
    if dataset_id not in DATASET_CONFIGS:
        raise ValueError(f"Unknown dataset {dataset_id!r}; registered datasets are {sorted(DATASET_CONFIGS)}.")
    return DATASET_CONFIGS[dataset_id]()

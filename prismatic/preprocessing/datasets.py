"""LLaVA-format datasets: `AlignDataset` (image + caption) and `FinetuneDataset` (multi-turn conversations).

An item is `{"input_ids": LongTensor[L], "labels": LongTensor[L], "pixel_values": dict | None}`:
- `image` absent: a text-only row (`pixel_values` None); a path: one image; a list of paths: a multi-image row whose
  K images all go to the vision transform (the static encoder sees image 1, the SVD stream gets all K in its frame
  slots). `<image>` placeholders are dropped from the text: the VLM splices the visual tokens after token 0.
- Tokenization is the LLM's own (its `ConversationTokenizer`): labels are -100 except assistant tokens. Image rows
  must fit `llm_max_length` together with their visual tokens.

Bad samples found at load time (a file deleted or corrupted after the preflight) follow `on_bad_sample`: `error`
raises a `DatasetError` naming the file and the problem; `skip` substitutes the next good sample (deterministic, so a
resumed run sees the same data) and counts it in `substitutions`, logging each one.

With `attach_features` (e.g. `FeatureCache.attach`, for `scripts/pretrain.py --feature_cache_dir`), image items also
carry the cached encoder outputs of their pixels under `features:<stream>`; the pixels stay, for streams that miss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
from PIL import Image
from torch.utils.data import Dataset

from prismatic.models.backbones.llm.conversation import ConversationTokenizer
from prismatic.models.backbones.vision.base_vision import ImageTransform, PixelValues
from prismatic.overwatch import initialize_overwatch
from prismatic.preprocessing.preflight import PreflightReport
from prismatic.preprocessing.records import (
    BadSamplePolicy,
    DatasetError,
    PackedRecords,
    Problem,
    ProblemKind,
    RecordKind,
    SampleProblem,
    caption_conversation,
    check_policy,
    conversation_problem,
    image_relpaths,
    sample_id,
)
from prismatic.preprocessing.samples import PIL_READ_ERRORS, SampleTokenizer, load_rgb

overwatch = initialize_overwatch(__name__)


class DatasetItem(TypedDict):
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: PixelValues | None


class LLaVADataset(Dataset[DatasetItem]):
    """Shared machinery; subclasses fix the record kind (captions or conversations).

    `records` are the samples to train on (after the preflight dropped bad ones); `source_indices[i]` is record i's
    position in the JSON file, so every message points at the sample the user can find.
    """

    record_kind: RecordKind = "conversation"

    def __init__(
        self,
        records: Sequence[Any],
        image_dir: Path,
        image_transform: ImageTransform,
        tokenizer: ConversationTokenizer,
        num_visual_tokens: int,
        source: Path,
        on_bad_sample: BadSamplePolicy = "error",
        max_images: int | None = None,
        truncate_long_samples: bool = False,
        source_indices: Sequence[int] | None = None,
        attach_features: Callable[[PixelValues], PixelValues] | None = None,
    ) -> None:
        super().__init__()
        if not records:
            raise DatasetError(f"No usable samples left in {source}; see the preflight report above.")
        self.image_dir, self.source = Path(image_dir), Path(source)
        self.image_transform = image_transform
        self.on_bad_sample = check_policy(on_bad_sample)
        self.max_images = max_images
        self.attach_features = attach_features  # cached frozen-encoder features for image items
        self.tokenizer = SampleTokenizer(tokenizer, num_visual_tokens, truncate_long_samples=truncate_long_samples)
        self.source_indices = list(source_indices) if source_indices is not None else list(range(len(records)))
        if len(self.source_indices) != len(records):
            raise ValueError(f"Got {len(self.source_indices)} source indices for {len(records)} records.")
        self._lengths = [self._estimate(record) for record in records]  # before packing: one pass over the dicts
        self.records = PackedRecords(records)
        self.substitutions: Counter[ProblemKind] = Counter()
        self.preflight_report: PreflightReport | None = None  # set by `get_dataset_and_collator` when it ran one

    # === Subclass hooks ===
    def conversation(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return record["conversations"]

    # === Sizes for the sampler ===
    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[tuple[bool, int]]:
        """(has_image, estimated tokens incl. visual tokens) per sample, without tokenizing (cheap for 665k)."""
        return list(self._lengths)

    def _estimate(self, record: Any) -> tuple[bool, int]:
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
            return False, 1  # a malformed record (no preflight): the loader will report it, any length works here
        has_image = record.get("image") is not None
        values = [turn.get("value", "") for turn in record["conversations"] if isinstance(turn, dict)]
        text = "\n".join(v for v in values if isinstance(v, str)).replace("<image>", "")
        return has_image, self.tokenizer.estimate_length(text, len(values), has_image)

    # === Loading ===
    def __getitem__(self, index: int) -> DatasetItem:
        try:
            return self._load(index)
        except SampleProblem as bad:
            if self.on_bad_sample == "error":
                raise DatasetError(self._error_message(bad.problem)) from None
            return self._substitute(index, bad.problem)

    def _substitute(self, index: int, problem: Problem) -> DatasetItem:
        """Deterministic stand-in for a sample that went bad: the next good sample in dataset order. Every bad sample
        met on the way is counted and logged."""
        for step in range(1, len(self) + 1):
            candidate = (index + step) % len(self)
            self._count(problem, replacement=candidate)
            try:
                return self._load(candidate)
            except SampleProblem as bad:
                problem = bad.problem
        raise DatasetError(f"Every sample of {self.source} failed to load; last problem: {problem.describe()}.")

    def _count(self, problem: Problem, replacement: int) -> None:
        self.substitutions[problem.kind] += 1
        overwatch.warning_all(
            f"Skipping bad {problem.describe()} in {self.source} (on_bad_sample=skip); using sample "
            f"#{self.source_indices[replacement]} instead. Skipped so far: {sum(self.substitutions.values())}."
        )

    def _error_message(self, problem: Problem) -> str:
        return (
            f"Bad training sample in {self.source}: {problem.describe()}. Fix or remove it (`python "
            "scripts/preprocess.py --check-only` re-checks a whole dataset), or set on_bad_sample=skip to skip bad "
            "samples (each one is counted and logged)."
        )

    def _problem(self, index: int, record: Any, kind: ProblemKind, detail: str, file: str | None = None) -> Problem:
        return Problem(self.source_indices[index], sample_id(record, self.source_indices[index]), kind, detail, file)

    def _load(self, index: int) -> DatasetItem:
        record = self.records[index]
        structural = conversation_problem(record, self.record_kind)
        if structural is not None:
            raise SampleProblem(self._problem(index, record, *structural))
        relpaths = image_relpaths(record)
        if self.max_images is not None and len(relpaths) > self.max_images:
            detail = f"{len(relpaths)} images, but the vision backbone takes at most {self.max_images} (its frame slots)"
            raise SampleProblem(self._problem(index, record, ProblemKind.TOO_MANY_IMAGES, detail))

        encoded = self.tokenizer.encode(self.conversation(record), has_image=bool(relpaths))
        if isinstance(encoded[0], ProblemKind):
            raise SampleProblem(self._problem(index, record, *encoded))  # type: ignore[misc]
        input_ids, labels = encoded
        images = [self._open(index, record, relpath) for relpath in relpaths]
        pixel_values = None
        if images:
            pixel_values = self.image_transform(images[0] if len(images) == 1 else images)
            if self.attach_features is not None:
                pixel_values = self.attach_features(pixel_values)
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}  # type: ignore[typeddict-item]

    def _open(self, index: int, record: Any, relpath: str) -> Image.Image:
        path = self.image_dir / relpath
        try:
            return load_rgb(path)
        except FileNotFoundError:
            missing = self._problem(index, record, ProblemKind.MISSING_IMAGE, "no such file", str(path))
            raise SampleProblem(missing) from None
        except PIL_READ_ERRORS as error:
            detail = f"cannot be read as an image ({type(error).__name__}: {error})"
            raise SampleProblem(self._problem(index, record, ProblemKind.CORRUPT_IMAGE, detail, str(path))) from None


class AlignDataset(LLaVADataset):
    """Caption data (LLaVA's 558k): each sample is one image and a caption; the loss covers the caption only."""

    record_kind: RecordKind = "caption"

    def conversation(self, record: dict[str, Any]) -> list[dict[str, str]]:
        return caption_conversation(record)


class FinetuneDataset(LLaVADataset):
    """Instruction data (LLaVA's 665k mix and any LLaVA-format JSON): image, multi-image and text-only rows."""

    record_kind: RecordKind = "conversation"

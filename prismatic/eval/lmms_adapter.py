"""lmms-eval adapter: `python -m lmms_eval --model dyva --model_args pretrained=RUN_DIR --tasks TASK` on this
framework's models (`pip install -e .[lmms]`, lmms-eval 0.7.3).

Registration: the `lmms_eval.models` entry point `dyva` (pyproject.toml) names `manifest`, which lmms-eval loads when
`lmms_eval.models` is imported. A `@register_model` decorator alone does not make a model visible to the CLI in
0.7.3, so there is none here. Nothing else in `prismatic` imports this module (it imports lmms_eval).

`DyVALmms` is a "simple" lmms-eval model: each `generate_until` request carries (context, gen_kwargs, doc_to_visual,
doc_id, task, split); the images come from `doc_to_visual(doc)`, the context is wrapped by the model's own prompt
builder (as `prismatic.eval.predict.wrap_prompts` does for our benchmarks), and rows that share their generation
kwargs run as one batch of `--batch_size`. Generation kwargs:
- `max_new_tokens`, `until` (the answer is cut at the first stop string), `temperature` / `do_sample` / `top_p` /
  `top_k` (greedy when temperature is 0 or do_sample is false);
- `candidates` (a list of single-token strings; our key, lmms-eval passes it through): closed-form scoring. The answer
  is the candidate with the highest first-token probability (`prismatic.eval.predict.candidate_probabilities`), the
  protocol of our VSR / POPE / TallyQA scoring, without a log-likelihood request.

Log-likelihood requests (`output_type: loglikelihood` / `multiple_choice`) are refused: lmms-eval 0.7.3 stringifies
their results before scoring, so such tasks crash whatever the model returns. `prismatic/eval/lmms_tasks/README.md`
has a task example on local data and the other traps.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from prismatic.eval.predict import (
    KEYFRAME_POLICIES,
    KeyframePolicy,
    RowImages,
    candidate_probabilities,
    keyframe_slots,
    select_keyframes,
    wrap_prompts,
)

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

    from prismatic.models.vlms.prismatic import PrismaticVLM

MODEL_ID = "dyva"
CANDIDATES_KEY = "candidates"
DEFAULT_MAX_NEW_TOKENS = 128
DTYPES = ("auto", "float32", "bfloat16", "float16")
# `prismatic.load` keywords pointing at local copies of what a checkpoint does not hold (machines without the hub).
WEIGHT_SOURCE_ARGS = ("vision_pretrained_path", "svd_model_id", "svd_variant", "llm_pretrained_path")
# Keys lmms-eval tasks commonly pass that change nothing here (no aspect-ratio modes; generate always uses the cache).
IGNORED_KEYS = frozenset({"image_aspect_ratio", "use_cache"})
HANDLED_KEYS = frozenset(
    {"max_new_tokens", "until", "temperature", "do_sample", "top_p", "top_k", "num_beams", CANDIDATES_KEY}
)
LOGLIKELIHOOD_UNSUPPORTED = (
    "The dyva lmms-eval model does not answer log-likelihood requests (output_type loglikelihood / multiple_choice): "
    "lmms-eval 0.7.3 stringifies log-likelihood results before scoring, so those tasks crash for every model. Score "
    "closed-form tasks by generation instead: output_type generate_until with `candidates: [...]` (single-token "
    "strings, e.g. ['True', 'False'] or option letters) in the task's generation_kwargs; the answer is then the "
    "candidate with the highest first-token probability. See prismatic/eval/lmms_tasks/README.md."
)


def manifest() -> ModelManifest:
    """The `lmms_eval.models` entry point's payload. ModelManifest is imported here, not at module level: lmms-eval
    loads this entry point while `lmms_eval.models` is still initialising, and a module-level import from it in a
    process that imported this module first would re-enter that initialisation and drop the registration."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.DyVALmms")


# === Arguments ===
def parse_batch_size(value: int | str | None) -> int:
    """`--batch_size` arrives as a string ("2"); lmms-eval's "auto" sizing is not supported."""
    try:
        size = int(value if value is not None else 1)
    except ValueError:
        raise ValueError(f"dyva needs an integer --batch_size (rows per generate call), got {value!r}.") from None
    if size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {size}.")
    return size


def resolve_device(device: str | None, local_rank: int, world_size: int) -> torch.device:
    """'auto' (or None): cuda (this process's GPU when launched with several processes) when available, else cpu."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank}" if world_size > 1 else "cuda")
        return torch.device("cpu")
    return torch.device(str(device))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on GPU (the evaluation protocol), float32 on CPU (as scripts/evaluate.py)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}.")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def parse_max_keyframes(value: int | str | None, slots: int | None) -> int | None:
    """The most images one row passes to the model: `max_keyframes` if given, else the generative encoder's T (more
    than T cannot be placed); None (no limit) for a static-only model, which looks at the first image only."""
    if value in (None, "", "none", "None"):
        return slots
    limit = int(value)
    if limit < 1:
        raise ValueError(f"max_keyframes must be at least 1, got {limit}.")
    if slots is not None and limit > slots:
        raise ValueError(
            f"max_keyframes={limit} exceeds the model's {slots} keyframe slots; use at most {slots} (images beyond "
            "the slots cannot be placed)."
        )
    return limit


# === Requests ===
def to_pil_images(visuals: object, task: str) -> list[Image.Image]:
    """What `doc_to_visual` returned (None, an image or a list of images), as RGB images. Video paths and audio are
    not supported: this adapter takes images (frames as a list of images)."""
    if visuals is None:
        return []
    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    images = []
    for item in items:
        if not isinstance(item, Image.Image):
            raise TypeError(
                f"Task {task!r}: doc_to_visual gave a {type(item).__name__}; the dyva model takes PIL images (a list "
                "of them for the frames of one sample). Decode videos to frames in the task's doc_to_visual."
            )
        images.append(item.convert("RGB"))
    return images


def row_images(images: list[Image.Image], limit: int | None, policy: KeyframePolicy) -> RowImages:
    """None, the image, or the selected frames for the keyframe slots (as `prismatic.eval.runner.open_images`)."""
    if not images:
        return None
    if len(images) == 1:
        return images[0]
    return [images[i] for i in select_keyframes(len(images), limit, policy)]


def user_message(context: str) -> str:
    """The task's context without `<image>` markers: the model splices the visual tokens itself, after the prompt's
    first token, so a marker would only be text."""
    return context.replace("<image>", "").strip()


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            index = text.find(stop)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


def stop_strings(until: object) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        return list(until)
    raise ValueError(f"generation kwarg `until` must be a string or a list of strings, got {until!r}.")


def parse_candidates(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
        raise ValueError(
            f"generation kwarg `{CANDIDATES_KEY}` must be a non-empty list of strings (e.g. ['True', 'False']), got "
            f"{value!r}."
        )
    return list(value)


def generate_options(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """`vlm.generate` options from a task's generation kwargs: greedy when temperature is 0 or do_sample is false
    (a positive temperature alone means sampling, as in lmms-eval's own models)."""
    if int(gen_kwargs.get("num_beams") or 1) != 1:
        raise ValueError(f"dyva generates with one beam; the task asks for num_beams={gen_kwargs['num_beams']}.")
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    do_sample = temperature > 0 and bool(gen_kwargs.get("do_sample", True))
    options: dict[str, Any] = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)}
    if do_sample:
        options.update(do_sample=True, temperature=temperature)
        if gen_kwargs.get("top_p") is not None:
            options["top_p"] = float(gen_kwargs["top_p"])
        if gen_kwargs.get("top_k") is not None:
            options["top_k"] = int(gen_kwargs["top_k"])
    return options


def batch_key(task: str, gen_kwargs: dict[str, Any]) -> str:
    """Requests batch together only when they share their task and generation kwargs."""
    return json.dumps([task, gen_kwargs], sort_keys=True, default=str)


# === The model ===
class DyVALmms(lmms):
    """A PrismaticVLM (run directory, release-layout directory or released id) as an lmms-eval simple model.

    model_args: `pretrained` (required), `device` (auto: cuda when available, else cpu), `dtype` (auto: bfloat16 on
    GPU, float32 on CPU), `max_keyframes` (images per row for the generative encoder; default its T),
    `keyframe_policy` (subsample | first, for items with more images than that), `hf_token`, and the local weight
    sources of `prismatic.load` (`vision_pretrained_path`, `svd_model_id`, `svd_variant`, `llm_pretrained_path`).
    `--batch_size N`: rows per forward / generate call (on the command line, not in model_args: lmms-eval always
    passes its own).
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        max_keyframes: int | str | None = None,
        keyframe_policy: str = "subsample",
        hf_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)  # lmms-eval's auto batch sizing; unused with an integer batch size
        given = {key: kwargs.pop(key, None) for key in WEIGHT_SOURCE_ARGS}
        sources = {key: str(value) for key, value in given.items() if value is not None}
        if kwargs:
            raise TypeError(
                f"Unknown dyva model_args {sorted(kwargs)}; supported: pretrained, device, dtype, max_keyframes, "
                f"keyframe_policy, hf_token, {', '.join(WEIGHT_SOURCE_ARGS)} (and --batch_size on the command line)."
            )
        if keyframe_policy not in KEYFRAME_POLICIES:
            raise ValueError(f"keyframe_policy must be one of {list(KEYFRAME_POLICIES)}, got {keyframe_policy!r}.")
        self.batch_size_per_device = parse_batch_size(batch_size)
        self.keyframe_policy: KeyframePolicy = keyframe_policy  # type: ignore[assignment]
        self._init_processes()
        self._device = resolve_device(device, self._local_rank, self._world_size)
        self._vlm = self._load(str(pretrained), hf_token, resolve_dtype(dtype, self._device), sources)
        self.max_keyframes = parse_max_keyframes(max_keyframes, keyframe_slots(self._vlm))
        self._warned_keys: set[str] = set()

    def _init_processes(self) -> None:
        """Rank and world size from the launcher's environment (accelerate launch / torchrun). With several processes
        the evaluator gathers request counts through `self.accelerator` on `self.device` and waits on it, so an
        Accelerator is made then (it sets up the process group: gloo on CPU, nccl on GPU). One process needs none."""
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        self._rank = int(os.environ.get("RANK", 0))
        self._local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self._world_size > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()

    def _load(self, pretrained: str, hf_token: str | None, dtype: torch.dtype, sources: dict[str, str]) -> PrismaticVLM:
        from prismatic.loader import load

        vlm = load(pretrained, hf_token=hf_token, **sources)
        return vlm.to(device=self._device, dtype=dtype).eval()

    # lmms-eval reads these.
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def model(self) -> PrismaticVLM:
        return self._vlm

    # === Requests ===
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(LOGLIKELIHOOD_UNSUPPORTED)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "The dyva lmms-eval model answers single-round generate_until tasks only (one user turn per document)."
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in request order; batches of `--batch_size` rows sharing task and kwargs."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs, _, _, task, _ = request.args
            groups.setdefault(batch_key(task, gen_kwargs), []).append(index)
        answers: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="dyva")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size_per_device):
                batch = indices[start : start + self.batch_size_per_device]
                for index, answer in zip(batch, self._answer([requests[i] for i in batch])):
                    answers[index] = answer
                    self.cache_hook.add_partial("generate_until", requests[index].args[:2], answer)
                progress.update(len(batch))
        progress.close()
        return [answer if answer is not None else "" for answer in answers]

    def _answer(self, batch: list[Instance]) -> list[str]:
        """One batch sharing task and generation kwargs: closed form when they name candidates, else generation."""
        gen_kwargs = dict(batch[0].args[1] or {})
        self._warn_unhandled(gen_kwargs)
        images = [self._row_images(request) for request in batch]
        prompts = wrap_prompts(self._vlm, [user_message(request.args[0]) for request in batch])
        candidates = parse_candidates(gen_kwargs.get(CANDIDATES_KEY))
        if candidates is not None:
            probabilities = candidate_probabilities(self._vlm, images, prompts, candidates)
            return [candidates[int(i)] for i in probabilities.argmax(dim=-1)]
        texts = self._vlm.generate(images, prompts, **generate_options(gen_kwargs))
        until = stop_strings(gen_kwargs.get("until"))
        return [cut_at_stop_strings(text, until) for text in texts]

    def _row_images(self, request: Instance) -> RowImages:
        _, _, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        return row_images(to_pil_images(visuals, task), self.max_keyframes, self.keyframe_policy)

    def _warn_unhandled(self, gen_kwargs: dict[str, Any]) -> None:
        """Tasks carry kwargs written for other models; say once which ones change nothing here."""
        unknown = sorted(set(gen_kwargs) - HANDLED_KEYS - IGNORED_KEYS - self._warned_keys)
        if unknown:
            self._warned_keys.update(unknown)
            warnings.warn(f"dyva ignores the generation kwargs {unknown}.", UserWarning, stacklevel=3)

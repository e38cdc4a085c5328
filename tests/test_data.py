"""The data pipeline on a tiny LLaVA-format dataset: items, collation, a real forward/backward, and every bad-input
case (error names the file and the problem; skip counts right). The sampler has its own file, test_sampler.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gc
import importlib.util
import json
import pickle
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import draccus
import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.assembly import build_vlm
from prismatic.conf.datasets import DatasetConfig, LLaVA_Custom_Config, LLaVA_SVD_Config, get_dataset_config
from prismatic.conf.models import get_model_config
from prismatic.models.backbones.llm.base_llm import LLMBackbone
from prismatic.models.materialize import get_llm_backbone_and_tokenizer, get_vision_backbone_and_transform
from prismatic.models.stages import Stage
from prismatic.preprocessing.collator import PaddedCollator
from prismatic.preprocessing.datasets import AlignDataset, FinetuneDataset
from prismatic.preprocessing.materialize import get_dataset_and_collator
from prismatic.preprocessing.preflight import PreflightReport, run_preflight
from prismatic.preprocessing.records import DatasetError, ProblemKind, load_records
from prismatic.preprocessing.samples import SampleTokenizer
from prismatic.util.constants import IGNORE_INDEX

MAX_LEN = 320  # tiny DyVA has 144 visual tokens: image rows get 176 text tokens, text rows 320


def save_image(path: Path, seed: int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def turns(*values: str) -> list[dict[str, str]]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def good_records() -> list[dict]:
    records = [
        {"id": f"img-{i}", "image": f"coco/{i}.png",
         "conversations": turns("<image>\nWhat is shown?" if i % 2 else "What is shown?\n<image>", "red " * (2 + 5 * i))}
        for i in range(6)
    ]
    records.append({"id": "multi-2", "image": ["frames/a0.png", "frames/a1.jpg"],
                    "conversations": turns("<image>\n<image>\nWhat changed?", "It moved.", "Which way?", "Left.")})
    records.append({"id": "multi-3", "image": ["frames/b0.png", "frames/b1.png", "frames/b2.png"],
                    "conversations": turns("<image>\nDescribe the motion.", "A ball falls down.")})
    records += [{"id": f"text-{i}", "conversations": turns("Say hello.", "hello " * (1 + 10 * i))} for i in range(3)]
    return records


def write_dataset(root: Path, records: list[dict]) -> LLaVA_Custom_Config:
    images = root / "images"
    for seed, rel in enumerate(["coco/0.png", "coco/1.png", "coco/2.png", "coco/3.png", "coco/4.png", "coco/5.png",
                                "frames/a0.png", "frames/a1.jpg", "frames/b0.png", "frames/b1.png", "frames/b2.png"]):
        if not (images / rel).exists():
            save_image(images / rel, seed)
    (root / "data.json").write_text(json.dumps(records))
    return LLaVA_Custom_Config(finetune_stage_components=(Path("data.json"), Path("images")),
                               align_stage_components=(Path("data.json"), Path("images")), dataset_root_dir=root)


@pytest.fixture(scope="module")
def vision():
    return get_vision_backbone_and_transform("tiny-siglip+svd")


@pytest.fixture(scope="module")
def llama() -> LLMBackbone:
    return get_llm_backbone_and_tokenizer("tiny-llama2", llm_max_length=MAX_LEN)[0]


@pytest.fixture(scope="module")
def qwen() -> LLMBackbone:
    return get_llm_backbone_and_tokenizer("tiny-qwen25", llm_max_length=MAX_LEN)[0]


@pytest.fixture(scope="module")
def good_cfg(tmp_path_factory) -> LLaVA_Custom_Config:
    return write_dataset(tmp_path_factory.mktemp("llava"), good_records())


def build(cfg, vision, llm, stage="finetune", **kw):
    return get_dataset_and_collator(stage, cfg, vision[1], llm.conversation_tokenizer(), vision[0].num_visual_tokens,
                                    **kw)


# === Configs ===
def test_dataset_configs_parse_and_alias(tmp_path: Path) -> None:
    @dataclass
    class Top:
        dataset: DatasetConfig = field(default_factory=LLaVA_SVD_Config)

    cfg = draccus.parse(Top, args=["--dataset.type", "llava_svd", "--dataset.dataset_root_dir", str(tmp_path)])
    assert vars(cfg.dataset) == {**vars(get_dataset_config("llava-svd")), "dataset_root_dir": tmp_path}
    assert "type: llava_svd" in draccus.dump(cfg)  # a saved config.yaml keeps the user's spelling
    assert cfg.dataset.components("finetune") == (tmp_path / "LLaVA-FT/llava_v1_5_mix665k.json", tmp_path / "LLaVA-FT")
    v15 = get_dataset_config("llava-v15")
    assert [p.name for p in v15.components("finetune")] == ["llava_v1_5_mix665k.json", "llava-v1.5-instruct"]
    custom = draccus.parse(Top, args=["--dataset.type", "llava-custom", "--dataset.finetune_stage_components",
                                      f"[{tmp_path}/my.json, {tmp_path}/imgs]"]).dataset
    assert custom.components("finetune-unet") == (tmp_path / "my.json", tmp_path / "imgs")  # absolute paths win
    with pytest.raises(ValueError, match="llava-svd"):
        get_dataset_config("llava")


# === Items and batches ===
def test_items(good_cfg, vision, llama) -> None:
    dataset, _ = build(good_cfg, vision, llama)
    assert isinstance(dataset, FinetuneDataset) and len(dataset) == 11
    for index, item in enumerate(dataset):
        ids, labels, pixels = item["input_ids"], item["labels"], item["pixel_values"]
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        assert ids[0] == llama.tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
        assert (labels != IGNORE_INDEX).any() and (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()
        assert "<image>" not in llama.tokenizer.decode(ids)
        frames = {6: 2, 7: 3}.get(index, 1)
        if index >= 8:
            assert pixels is None
        else:
            assert pixels["siglip"].shape == (3, 64, 64) and pixels["svd"].shape == (frames, 3, 64, 64)
            assert pixels["svd"].dtype == torch.uint8
    answer = llama.tokenizer.decode(dataset[6]["labels"][dataset[6]["labels"] != IGNORE_INDEX])
    assert "It moved." in answer and "Left." in answer and "Which way" not in answer
    lengths = dataset.modality_lengths()
    assert [m for m, _ in lengths] == [True] * 8 + [False] * 3
    assert all(n > 144 for _, n in lengths[:8]) and lengths[5][1] > lengths[0][1]


def test_align_dataset_trains_on_caption_only(good_cfg, vision, llama) -> None:
    records = [{"id": f"cap-{i}", "image": f"coco/{i}.png",
                "conversations": turns("<image>\nRender a clear and concise summary of the photo.", f"A red dot {i}.")}
               for i in range(3)]
    (good_cfg.dataset_root_dir / "align.json").write_text(json.dumps(records))
    cfg = LLaVA_Custom_Config(align_stage_components=(Path("align.json"), Path("images")),
                              dataset_root_dir=good_cfg.dataset_root_dir)
    dataset, _ = build(cfg, vision, llama, stage="align")
    assert isinstance(dataset, AlignDataset)
    item = dataset[1]
    text = llama.tokenizer.decode(item["input_ids"])
    assert "summary" not in text and "A red dot 1." in text
    assert llama.tokenizer.decode(item["labels"][item["labels"] != IGNORE_INDEX]).strip() == "A red dot 1.</s>"


def test_collated_mixed_batch(good_cfg, vision, llama) -> None:
    dataset, collator = build(good_cfg, vision, llama)
    rows = [0, 8, 7, 6, 9]  # image, text, 3 frames, 2 frames, text
    items = [dataset[i] for i in rows]
    batch = collator(items)
    lengths = [len(item["input_ids"]) for item in items]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert (batch["input_ids"][row, n:] == llama.pad_token_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert batch["has_image"].tolist() == [True, False, True, True, False]
    assert batch["pixel_values"]["siglip"].shape == (3, 3, 64, 64)
    assert batch["pixel_values"]["svd"].shape == (3, 3, 3, 64, 64) and batch["pixel_values"]["svd_count"].tolist() == [
        1, 3, 2]
    text_only = collator([dataset[8], dataset[9]])
    assert text_only["pixel_values"] is None and not text_only["has_image"].any()
    left = PaddedCollator(llama.pad_token_id, padding_side="left")([dataset[8], dataset[10]])
    n = len(dataset[8]["input_ids"])
    assert left["attention_mask"][0].tolist() == [0] * (left["input_ids"].shape[1] - n) + [1] * n
    assert left["padding_side"] == "left"


def attach_zeros(pixels: dict) -> dict:  # stands in for FeatureCache.attach (module level: it must pickle)
    return {**pixels, "features:siglip": torch.zeros(4, 8)}


def test_stage_enum_attached_features_and_filler_row(good_cfg, vision, llama) -> None:
    dataset, collator = build(good_cfg, vision, llama, stage=Stage.FINETUNE_UNET, attach_features=attach_zeros,
                              fill_text_only_batches=True)
    assert isinstance(dataset, FinetuneDataset) and "features:siglip" in dataset[0]["pixel_values"]
    assert not any(isinstance(value, torch.nn.Module) for value in vars(dataset).values())  # no LLM in the dataset
    restored = pickle.loads(pickle.dumps(dataset))  # what data-loader workers started with `spawn` receive
    assert torch.equal(restored[6]["input_ids"], dataset[6]["input_ids"])
    text_only = collator([dataset[8], dataset[9]])  # one masked dummy image row, carrying attached features too
    assert text_only["filler_rows"] == 1 and text_only["has_image"].tolist() == [False, False, True]
    assert text_only["pixel_values"]["features:siglip"].shape == (1, 4, 8)
    assert (text_only["labels"][2] == IGNORE_INDEX).all()
    assert collator([dataset[0], dataset[8]])["filler_rows"] == 0
    with pytest.raises(ValueError, match="valid stages"):
        build(good_cfg, vision, llama, stage="pretrain")


def test_qwen_padding_equal_to_eos_is_masked_by_length(vision, qwen, tmp_path: Path) -> None:
    pad = qwen.pad_token_id
    assert pad == qwen.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    records = [{"id": "q0", "conversations": turns("Say it.", "Done<|endoftext|>")},
               {"id": "q1", "conversations": turns("Say something much longer, please.", "word " * 20)}]
    dataset, collator = build(write_dataset(tmp_path, records), vision, qwen)
    short, long = dataset[0], dataset[1]
    assert (short["input_ids"] == pad).sum() == 1  # a real <|endoftext|> inside the answer
    batch = collator([short, long])
    n = len(short["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    real_eos = (short["input_ids"] == pad).nonzero().item()
    assert batch["attention_mask"][0, real_eos] == 1 and batch["labels"][0, real_eos] == pad
    assert (batch["input_ids"][0, n:] == pad).all() and (batch["labels"][0, n:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("model_id", ["dyva_siglip+tiny", "dyva_siglip_qwen+tiny"])
def test_forward_backward_on_mixed_batch(good_cfg, model_id: str) -> None:
    vlm = build_vlm(replace(get_model_config(model_id), llm_max_length=MAX_LEN)).train()
    vlm.freeze_backbones("finetune")
    dataset, collator = get_dataset_and_collator(
        "finetune", good_cfg, vlm.vision_backbone.get_image_transform(), vlm.llm_backbone.conversation_tokenizer(),
        vlm.num_visual_tokens,
    )
    batch = collator([dataset[i] for i in (0, 8, 7, 6)])
    output = vlm(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels", "has_image")})
    assert torch.isfinite(output.loss)
    assert output.logits.shape[1] == batch["input_ids"].shape[1] + vlm.num_visual_tokens
    output.loss.backward()
    grads = [p.grad for p in vlm.projector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


# === Bad input ===
def bad_case(root: Path, case: str) -> tuple[dict, str | None]:
    """One bad record (and its broken file) added to the good dataset; returns it and the file the error names."""
    images = root / "images"
    if case == "missing-image":
        return {"id": "bad", "image": "coco/absent.png", "conversations": turns("<image>", "x")}, "coco/absent.png"
    if case == "corrupt-bytes":
        (images / "coco").mkdir(parents=True, exist_ok=True)
        (images / "coco/garbage.jpg").write_bytes(os.urandom(300))
        return {"id": "bad", "image": "coco/garbage.jpg", "conversations": turns("<image>", "x")}, "coco/garbage.jpg"
    if case == "truncated-png":
        save_image(images / "coco/cut.png", 99, size=(64, 64))
        data = (images / "coco/cut.png").read_bytes()
        (images / "coco/cut.png").write_bytes(data[: len(data) // 2])
        return {"id": "bad", "image": "coco/cut.png", "conversations": turns("<image>", "x")}, "coco/cut.png"
    if case == "malformed-conversation":
        return {"id": "bad", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}]}, None
    if case == "empty-conversation":
        return {"id": "bad", "image": "coco/0.png", "conversations": []}, None
    assert case == "too-long"  # fits as a text-only row (< 320 tokens), not with 144 visual tokens (> 176 text)
    return {"id": "bad", "image": "coco/0.png", "conversations": turns("<image>\nTalk.", "word " * 200)}, None


BAD_CASES = ["missing-image", "corrupt-bytes", "truncated-png", "malformed-conversation", "empty-conversation",
             "too-long"]
KIND = {"corrupt-bytes": "corrupt-image", "truncated-png": "corrupt-image"}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_sample_error_names_file_and_problem_and_skip_drops_it(tmp_path: Path, vision, llama, case: str) -> None:
    record, file = bad_case(tmp_path, case)
    cfg = write_dataset(tmp_path, [*good_records(), record])
    with pytest.raises(DatasetError) as error:
        build(cfg, vision, llama)
    message = str(error.value)
    assert KIND.get(case, case) in message and "on_bad_sample=skip" in message
    assert re.search(r"^\s+11\s+bad\s", message, re.MULTILINE)  # the table row: index, id, file, problem
    assert file is None or file in message
    dataset, _ = build(cfg, vision, llama, on_bad_sample="skip")
    assert len(dataset) == 11 and dataset.preflight_report.counts() == {ProblemKind(KIND.get(case, case)): 1}
    text_row = {**record, "image": None} if case == "too-long" else None
    if text_row is not None:  # the same text without an image fits: the visual tokens are what overflow
        checker = SampleTokenizer(llama.conversation_tokenizer(), 144)
        assert checker.encode(text_row["conversations"], has_image=False)[0].ndim == 1


def test_preflight_counts_every_problem_and_prints_a_table(tmp_path: Path, llama) -> None:
    records = good_records()
    for case in BAD_CASES:
        record, _ = bad_case(tmp_path, case)
        records.append({**record, "id": f"bad-{case}"})
    records.append({"id": "many", "image": [f"coco/{i}.png" for i in range(5)], "conversations": turns("<image>", "x")})
    write_dataset(tmp_path, records)
    report = run_preflight(load_records(tmp_path / "data.json"), tmp_path / "images", tmp_path / "data.json",
                           tokenizer=SampleTokenizer(llama.conversation_tokenizer(), 144), max_images=4)
    assert {k.value: n for k, n in report.counts().items()} == {
        "missing-image": 1, "corrupt-image": 2, "malformed-conversation": 1, "empty-conversation": 1, "too-long": 1,
        "too-many-images": 1}
    assert report.bad_indices() == set(range(11, 18))
    table = report.table(max_examples=3)
    assert "bad-missing-image" in table and "coco/absent.png" in table and "first 3 example(s)" in table
    assert PreflightReport.from_json(json.loads(json.dumps(report.to_json()))) == report


def error_from_worker(dataset, index: int) -> str:
    """The message of the DatasetError that a data-loader worker process raised for `dataset[index]`."""
    batches = iter(torch.utils.data.DataLoader(dataset, batch_size=None, sampler=[index], num_workers=1))
    message = ""
    try:
        next(batches)
    except DatasetError as error:
        message = str(error)
    # Shut the worker down here, not at some later garbage collection: torch's re-raise leaves a reference cycle, and
    # after a worker error the join waits for the worker's 5 s shutdown poll.
    del batches
    gc.collect()
    return message


def test_file_going_bad_mid_epoch(tmp_path: Path, vision, llama) -> None:
    cfg = write_dataset(tmp_path, good_records())
    strict, _ = build(cfg, vision, llama, preflight_cache=tmp_path / "preflight.json")
    key = json.loads((tmp_path / "preflight.json").read_text())["key"]  # keys cached reports: must stay stable
    assert (key["llm"], key["llm_max_length"], key["num_visual_tokens"]) == ("tiny-llama2", MAX_LEN, 144)
    lenient, _ = build(cfg, vision, llama, on_bad_sample="skip", preflight_cache=tmp_path / "preflight.json")
    (tmp_path / "images/coco/2.png").write_bytes(b"not a png any more")
    with pytest.raises(DatasetError, match=r"coco/2\.png.*corrupt-image.*on_bad_sample=skip"):
        strict[2]
    assert "coco/2.png" in error_from_worker(strict, index=2)  # the type survives the worker process
    substitute = lenient[2]
    assert torch.equal(substitute["input_ids"], lenient[3]["input_ids"])  # deterministic: the next good sample
    assert lenient.substitutions == Counter({ProblemKind.CORRUPT_IMAGE: 1})
    (tmp_path / "images/coco/3.png").unlink()
    assert torch.equal(lenient[2]["input_ids"], lenient[4]["input_ids"])
    assert lenient.substitutions == Counter({ProblemKind.CORRUPT_IMAGE: 2, ProblemKind.MISSING_IMAGE: 1})


# === Layout script ===
def test_preprocess_lays_out_and_validates_local_downloads(tmp_path: Path, capsys, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("preprocess", Path(__file__).parents[1] / "scripts/preprocess.py")
    preprocess = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "preprocess", preprocess)  # dataclasses look their module up there
    spec.loader.exec_module(preprocess)
    downloads = tmp_path / "downloads"
    records = [{"id": "c0", "image": "coco/train2017/0.png", "conversations": turns("<image>\nHi", "Hello.")},
               {"id": "g0", "image": "gqa/images/1.png", "conversations": turns("<image>\nHi", "Hello.")},
               {"id": "t0", "conversations": turns("Hi", "Hello.")}]
    (downloads / "llava_v1_5_mix665k.json").parent.mkdir(parents=True)
    (downloads / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    save_image(downloads / "coco2017/train2017/0.png", 0)
    save_image(downloads / "gqa/images/1.png", 1)
    argv = ["--dataset", "llava-svd", "--root", str(tmp_path / "data"), "--stage", "finetune",
            "--finetune-json", str(downloads / "llava_v1_5_mix665k.json"),
            "--coco", str(downloads / "coco2017"), "--gqa", str(downloads / "gqa")]
    assert preprocess.main(argv) == 0
    tree = tmp_path / "data/LLaVA-FT"
    assert (tree / "coco/train2017/0.png").is_file() and (tree / "gqa/images/1.png").is_file()
    assert "  3 samples" in capsys.readouterr().out
    (downloads / "gqa/images/1.png").unlink()
    assert preprocess.main(argv) == 1  # the preflight finds the missing file and says so
    assert "missing-image" in capsys.readouterr().out

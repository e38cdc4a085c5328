"""The evaluation harness's machinery, on the tiny run's model: first-token scoring equals transformers' generate
scores, batch size and interruption do not change the answers, re-scoring needs no model, results are keyed by the
weights, slim subsets follow vlm-evaluation's rule, and the ranking metrics match hand computations."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from eval_helpers import SINGLE_PROCESS, run_family, write_image, write_vsr_raw
from safetensors.torch import load_file, save_file

from prismatic.eval import runner
from prismatic.eval.benchmark import BenchmarkDataError, EvalItem
from prismatic.eval.benchmarks.vsr import VSR
from prismatic.eval.harness import evaluate_benchmark
from prismatic.eval.metrics import auroc, average_precision
from prismatic.eval.predict import (
    CandidateTokenError,
    candidate_probabilities,
    candidate_token_ids,
    select_keyframes,
    wrap_prompts,
)
from prismatic.eval.results import benchmark_table, fingerprint_directory
from prismatic.eval.runner import RunOptions, run_items
from prismatic.eval.slim import slim_ids, slim_ids_per_split
from prismatic.models.vlms.generation import normalize_inputs, prepare_pixel_values, splice_prompts, tokenize_prompts

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda _: None}


# === Pure functions ===
def test_slim_subsets_follow_vlm_evaluation() -> None:
    ids = [f"q{i}" for i in range(200)]
    shuffled = list(ids)
    random.Random(21).shuffle(shuffled)
    assert slim_ids(ids, 17) == shuffled[:17]
    split_of = {qid: ("simple" if int(qid[1:]) % 3 else "complex") for qid in ids}
    expected, seen = [], {"simple": 0, "complex": 0}
    for qid in shuffled:
        if seen[split_of[qid]] < 10:
            seen[split_of[qid]] += 1
            expected.append(qid)
    assert slim_ids_per_split(ids, split_of.__getitem__, 10) == expected


def test_ranking_metrics_by_hand() -> None:
    labels, scores = [True, False, True, False], [0.9, 0.8, 0.4, 0.1]
    assert auroc(labels, scores) == pytest.approx(3 / 4)  # positive-over-negative pairs: 3 of 4
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc([True, False], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert auroc([True, True], [0.1, 0.2]) is None and average_precision([False], [0.3]) is None


def test_keyframe_selection() -> None:
    assert select_keyframes(3, 8, "subsample") == [0, 1, 2]
    assert select_keyframes(10, 8, "subsample") == [0, 1, 3, 4, 5, 6, 8, 9]  # round(i * 9 / 7), first and last kept
    assert select_keyframes(10, 8, "first") == list(range(8))
    assert select_keyframes(5, None, "first") == list(range(5))
    assert select_keyframes(4, 1, "subsample") == [0]


# === The model side ===
def test_multi_token_candidates_are_refused(tiny_vlm) -> None:
    tokenizer = tiny_vlm.llm_backbone.tokenizer
    assert len(candidate_token_ids(tokenizer, ["True", "False", "A", "P"])) == 4
    with pytest.raises(CandidateTokenError, match="tokens for this tokenizer"):
        candidate_token_ids(tokenizer, ["True", "Unanswerable because"])


def test_first_token_scoring_equals_generate_scores(tiny_vlm, tmp_path: Path) -> None:
    """vlm-evaluation's way: generate(..., output_scores=True), softmax over the full vocabulary at the first generated
    position, candidates' entries renormalised; per item, batch 1. Ours: one batched forward pass."""
    from PIL import Image

    images = [Image.open(write_image(tmp_path / f"{i}.png", i)).convert("RGB") for i in range(3)]
    rows = [images[0], [images[1], images[2]], None]  # one image, two keyframes, text only
    prompts = wrap_prompts(tiny_vlm, ["Is the cat on the mat?", "Did it move?\nAnswer yes or no please.", "Hi?"])
    candidates = ["True", "False", "A"]
    ours = candidate_probabilities(tiny_vlm, rows, prompts, candidates)
    ids = candidate_token_ids(tiny_vlm.llm_backbone.tokenizer, candidates)
    llm_backbone = tiny_vlm.llm_backbone
    for row, (image, prompt) in enumerate(zip(rows, prompts)):
        images_1, prompts_1 = normalize_inputs(image, prompt)
        input_ids, mask = tokenize_prompts(llm_backbone, prompts_1)
        with torch.inference_mode():
            pixels, has_image = prepare_pixel_values(tiny_vlm, images_1, torch.device("cpu"))
            spliced = splice_prompts(tiny_vlm, input_ids, mask, pixels, has_image)
            out = llm_backbone.llm.generate(
                inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, max_new_tokens=1,
                do_sample=False, output_scores=True, return_dict_in_generate=True,
                pad_token_id=llm_backbone.pad_token_id,
            )  # fmt: skip
        full = torch.softmax(out.scores[0][0].float(), dim=-1)
        reference = full[ids] / full[ids].sum()
        torch.testing.assert_close(ours[row], reference, atol=1e-5, rtol=0)


# === Runs ===
@pytest.fixture()
def vsr_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_vsr_raw(root, count=10)
    VSR(strict_counts=False).prepare(root, **QUIET)
    return root


def answered(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def open_form_items(vsr_root: Path) -> list[EvalItem]:
    records = VSR().load_records(vsr_root)
    return [EvalItem(f"open-{q}", f"What is behind? {r['caption']}", (r["img_path"],)) for q, r in records.items()]


def test_batched_equals_batch_one(tiny_vlm, vsr_root: Path, tmp_path: Path) -> None:
    items = VSR().items(VSR().load_records(vsr_root))[:7] + open_form_items(vsr_root)[:3]
    results = {}
    for size in (1, 4):
        folder = tmp_path / f"batch-{size}"
        results[size] = run_items(tiny_vlm, items, vsr_root, folder, SINGLE_PROCESS, RunOptions(size), 4, **QUIET)
    for item in items:
        one, four = results[1][item.id], results[4][item.id]
        assert one.answer == four.answer
        if item.candidates:
            for candidate in item.candidates:
                assert one.probabilities[candidate] == pytest.approx(four.probabilities[candidate], abs=1e-5)


def test_interrupted_run_resumes_to_identical_results(tiny_vlm, vsr_root: Path, tmp_path: Path, monkeypatch) -> None:
    items = VSR().items(VSR().load_records(vsr_root))
    options = RunOptions(batch_size=3)
    reference = run_items(tiny_vlm, items, vsr_root, tmp_path / "once", SINGLE_PROCESS, options, 1, **QUIET)

    real, calls = runner.answer_batch, []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    folder = tmp_path / "interrupted"
    monkeypatch.setattr(runner, "answer_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        run_items(tiny_vlm, items, vsr_root, folder, SINGLE_PROCESS, options, 1, **QUIET)
    monkeypatch.setattr(runner, "answer_batch", real)
    saved = (folder / "predictions.rank0.jsonl").read_text().splitlines()
    assert len(saved) == 6  # two whole batches
    with open(folder / "predictions.rank0.jsonl", "a") as handle:  # a line cut short by the kill
        handle.write('{"id": "6", "answer": "Tr')
    counted: list[int] = []
    monkeypatch.setattr(runner, "answer_batch", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = run_items(tiny_vlm, items, vsr_root, folder, SINGLE_PROCESS, options, 1, **QUIET)
    assert len(counted) == 2  # batches 3 and 4 only
    assert resumed == reference
    assert answered(folder) == answered(tmp_path / "once")
    assert not list(folder.glob("predictions.rank*.jsonl"))


def evaluate_cli(*args: str) -> int:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_cli_results_rescore_and_tables(tiny_run_dir: Path, vsr_root: Path, tmp_path: Path, monkeypatch) -> None:
    results_dir = tmp_path / "results"
    assert evaluate_cli("--model", str(tiny_run_dir), "--benchmarks", "vsr", "--data_root", str(vsr_root),
                        "--results_dir", str(results_dir), "--batch_size", "4") == 0  # fmt: skip
    (model_folder,) = results_dir.iterdir()
    fingerprint = fingerprint_directory(tiny_run_dir, "")
    assert model_folder.name == f"tiny-{fingerprint.weights_sha256[:12]}"
    payload = json.loads((model_folder / "vsr" / "results.json").read_text())
    assert payload["schema_version"] == 1 and payload["model"]["weights_sha256"] == fingerprint.weights_sha256
    assert payload["metadata"]["items"] == 10 and len(payload["metadata"]["sha256"]) == 64
    assert {"package", "git_commit"} <= set(payload["code"])
    rows = answered(model_folder / "vsr")
    gold = {str(i): i % 3 != 0 for i in range(10)}
    hand = 100 * sum((r["answer"] == "True") == gold[r["id"]] for r in rows) / 10
    assert payload["metrics"]["accuracy__VSR-ExactMatch"] == pytest.approx(hand)
    assert "| tiny (ours) |" in (model_folder / "results.md").read_text()

    # --rescore: the same metrics from the saved predictions, without building a model.
    import prismatic.loader

    monkeypatch.setattr(prismatic.loader, "load", lambda *a, **k: pytest.fail("--rescore must not load the model"))
    (model_folder / "vsr" / "results.json").unlink()
    assert evaluate_cli("--rescore", "--model", str(model_folder), "--benchmarks", "vsr") == 0
    assert json.loads((model_folder / "vsr" / "results.json").read_text())["metrics"] == payload["metrics"]


def test_other_weights_get_their_own_results_folder(tiny_run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_run_dir, copy)
    weights = load_file(copy / "model.safetensors")
    name = next(k for k in weights if k.startswith("projector."))
    weights[name] = weights[name] + 1.0
    save_file(weights, copy / "model.safetensors")
    assert fingerprint_directory(copy, "").tag != fingerprint_directory(tiny_run_dir, "").tag
    assert fingerprint_directory(copy, "").name == fingerprint_directory(tiny_run_dir, "").name == "tiny"


def test_resume_with_other_settings_is_refused(tiny_vlm, tiny_fingerprint, vsr_root: Path, tmp_path: Path) -> None:
    family = VSR(strict_counts=False)
    evaluate_benchmark(tiny_vlm, tiny_fingerprint, family, vsr_root, tmp_path, SINGLE_PROCESS, RunOptions(5), **QUIET)
    with pytest.raises(BenchmarkDataError, match="other options"):
        evaluate_benchmark(tiny_vlm, tiny_fingerprint, family, vsr_root, tmp_path, SINGLE_PROCESS, RunOptions(4),
                           **QUIET)  # fmt: skip


def test_missing_metadata_and_raw_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"prepare_benchmarks\.py --benchmarks vsr"):
        VSR().load_records(tmp_path)
    with pytest.raises(BenchmarkDataError, match=r"test\.jsonl is missing.*vsr_zeroshot"):
        VSR().prepare(tmp_path)
    write_vsr_raw(tmp_path, count=4)
    with pytest.raises(BenchmarkDataError, match=r"found 4 statements in test\.jsonl, the protocol expects 1222"):
        VSR().prepare(tmp_path)


def test_tables_show_the_papers_numbers_for_released_models() -> None:
    table = benchmark_table(VSR(), {"accuracy__VSR-ExactMatch": 66.0}, "DyVA-7B", "dyva_siglip+7b")
    assert "| dyva_siglip+7b (paper) | 68.90 | 68.75 |" in table and "| 66.00 |" in table


@pytest.mark.slow
def test_two_processes_equal_one(tiny_run_dir: Path, vsr_root: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from helpers import TORCHRUN

    common = ["--model", str(tiny_run_dir), "--benchmarks", "vsr", "--data_root", str(vsr_root), "--batch_size", "3"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (("one", [sys.executable]), ("two", [str(TORCHRUN), "--standalone", "--nproc-per-node=2"])):
        command = [*launcher, str(REPO / "scripts" / "evaluate.py"), *common, "--results_dir", str(tmp_path / name)]
        subprocess.run(command, check=True, env=env, cwd=REPO, capture_output=True, timeout=600)
    (one,), (two,) = (tmp_path / "one").iterdir(), (tmp_path / "two").iterdir()
    assert answered(one / "vsr") == answered(two / "vsr")
    metrics = [json.loads((f / "vsr" / "results.json").read_text())["metrics"] for f in (one, two)]
    assert metrics[0] == metrics[1]


def test_family_runs_end_to_end(tiny_vlm, tiny_fingerprint, tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_vsr_raw(root, count=8)
    metrics, predictions = run_family(VSR(strict_counts=False), tiny_vlm, tiny_fingerprint, root, tmp_path / "r")
    assert set(predictions) == {str(i) for i in range(8)}
    assert all(set(p.probabilities) == {"True", "False"} for p in predictions.values())
    assert "auroc__VSR" in metrics and "accuracy__VSR-Projective" in metrics


def test_prepare_cli(tmp_path: Path) -> None:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("prepare_script", REPO / "scripts" / "prepare_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    raw = write_vsr_raw(tmp_path / "elsewhere", count=5)
    with pytest.raises(SystemExit, match="--raw_dir names the raw folder of one benchmark"):
        module.main(["--benchmarks", "vsr,pope", "--data_root", str(tmp_path / "data"), "--raw_dir", str(raw)])
    with pytest.raises(BenchmarkDataError, match="--allow_other_counts"):
        module.main(["--benchmarks", "vsr", "--data_root", str(tmp_path / "data"), "--raw_dir", str(raw)])
    assert module.main(["--benchmarks", "vsr", "--data_root", str(tmp_path / "data"), "--raw_dir", str(raw),
                        "--allow_other_counts"]) == 0  # fmt: skip
    records = VSR().load_records(tmp_path / "data")
    assert len(records) == 5 and Path(records["0"]["img_path"]).is_absolute()  # the raw files live outside data_root

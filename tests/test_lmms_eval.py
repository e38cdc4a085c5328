"""lmms-eval integration (`pip install -e .[lmms]`): the `dyva` entry point resolves to the adapter class, and the
shipped local task (`prismatic/eval/lmms_tasks/dyva_vsr_local.yaml`) runs end to end through `python -m lmms_eval`
(one process, and two under torchrun) on the shared tiny run, scoring what the model's own `candidate_probabilities`
say.

Skipped when lmms_eval is not installed (the `lmms` extra is not in `.[dev]`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import COLORS, REPO, TORCHRUN
from PIL import Image

pytest.importorskip("lmms_eval", reason="the lmms extra is not installed (pip install -e '.[lmms]')")

TASKS_DIR = REPO / "prismatic" / "eval" / "lmms_tasks"
TASK = "dyva_vsr_local"
BATCH_SIZE = 2


def task_module() -> ModuleType:
    """The task's functions, loaded by path as lmms-eval loads them (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location("vsr_local", TASKS_DIR / "vsr_local.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_vsr_data(root: Path) -> list[dict]:
    """test.jsonl + images/ in the task's default layout: 6 statements on solid squares, 4 true and 2 false (unequal,
    so a model that always answers the same scores differently for True and False)."""
    (root / "images").mkdir(parents=True)
    names = list(COLORS)
    records = []
    for i in range(6):
        color = names[i % len(names)]
        Image.new("RGB", (32, 32), COLORS[color]).save(root / "images" / f"{i}.png")
        said = color if i % 3 != 2 else names[(i + 1) % len(names)]
        records.append({"image": f"{i}.png", "caption": f"The square is {said}.", "label": int(said == color),
                        "relation": "is"})  # fmt: skip
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def expected_answers(run_dir: Path, data_root: Path, records: list[dict]) -> tuple[list[str], list[float]]:
    """The answers the adapter should give (argmax of candidate_probabilities, in the same batches) and each row's
    margin between the two candidates."""
    import prismatic
    from prismatic.eval.predict import candidate_probabilities, wrap_prompts

    task = task_module()
    vlm = prismatic.load(run_dir)
    kwargs = {"image_root": str(data_root / "images")}
    answers, margins = [], []
    for start in range(0, len(records), BATCH_SIZE):
        batch = records[start : start + BATCH_SIZE]
        images = [task.doc_to_visual(r, kwargs)[0] for r in batch]
        prompts = wrap_prompts(vlm, [task.doc_to_text(r) for r in batch])
        probabilities = candidate_probabilities(vlm, images, prompts, ["True", "False"])
        answers += ["True" if p[0] >= p[1] else "False" for p in probabilities.tolist()]
        margins += [abs(p[0] - p[1]) for p in probabilities.tolist()]
    return answers, margins


def test_generation_kwargs() -> None:
    from prismatic.eval.lmms_adapter import cut_at_stop_strings, generate_options, parse_candidates, stop_strings

    assert generate_options({"temperature": 0, "do_sample": True, "top_p": 0.9}) == {"max_new_tokens": 128}
    assert generate_options({"max_new_tokens": 4, "temperature": 0.5, "top_p": 0.9}) == {
        "max_new_tokens": 4, "do_sample": True, "temperature": 0.5, "top_p": 0.9}  # fmt: skip
    assert generate_options({"temperature": 0.5, "do_sample": False}) == {"max_new_tokens": 128}
    with pytest.raises(ValueError, match="num_beams"):
        generate_options({"num_beams": 3})
    assert cut_at_stop_strings("A red square.\n\nQ: next", stop_strings(["\n\n", "Q:"])) == "A red square."
    assert stop_strings("\n") == ["\n"] and stop_strings(None) == []
    with pytest.raises(ValueError, match="candidates"):
        parse_candidates("True")


def test_entry_point_resolves_to_the_adapter() -> None:
    from prismatic.eval.lmms_adapter import DyVALmms

    (entry_point,) = [ep for ep in importlib.metadata.entry_points(group="lmms_eval.models") if ep.name == "dyva"]
    manifest = entry_point.load()()
    assert (manifest.model_id, manifest.simple_class_path) == ("dyva", "prismatic.eval.lmms_adapter.DyVALmms")

    from lmms_eval.models import get_model

    assert get_model("dyva") is DyVALmms  # what `--model dyva` loads


def lmms_eval_command(nproc: int | None) -> list[str]:
    """`python -m lmms_eval`, or torchrun with `nproc` processes (documents strided across ranks)."""
    if nproc is None:
        return [sys.executable, "-m", "lmms_eval"]
    return [str(TORCHRUN), "--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "-m", "lmms_eval"]


# ~1 min each on 2 cores: lmms-eval's start-up, the model load and 6 documents in a subprocess.
@pytest.mark.slow
@pytest.mark.parametrize("nproc", [None, 2], ids=["one-process", "two-processes"])
def test_local_task_runs_end_to_end(tiny_run_dir: Path, tmp_path: Path, nproc: int | None) -> None:
    data_root, out = tmp_path / "vsr", tmp_path / "out"
    records = write_vsr_data(data_root)
    # --verbosity DEBUG: otherwise lmms-eval logs a failed evaluation and still exits 0.
    command = [*lmms_eval_command(nproc), "--model", "dyva", "--model_args", f"pretrained={tiny_run_dir}",
               "--tasks", TASK, "--include_path", str(TASKS_DIR), "--output_path", str(out),
               "--batch_size", str(BATCH_SIZE), "--log_samples", "--verbosity", "DEBUG"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "datasets-cache")}  # fmt: skip
    # The task's default layout: test.jsonl and images/ in the working directory.
    result = subprocess.run(command, cwd=data_root, env=env, capture_output=True, text=True, timeout=600)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert result.returncode == 0, f"lmms_eval exited {result.returncode}:\n{output}"

    # <output_path>/<model name from the pretrained path>/<date>_results.json
    (results_file,) = out.glob("*/*_results.json")
    scores = json.loads(results_file.read_text())["results"][TASK]
    answers, margins = expected_answers(tiny_run_dir, data_root, records)
    targets = ["True" if r["label"] else "False" for r in records]
    accuracy = sum(a == t for a, t in zip(answers, targets)) / len(records)
    assert scores["accuracy,none"] == pytest.approx(accuracy)

    (samples_file,) = out.glob(f"*/*_samples_{TASK}.jsonl")
    logged = {row["doc_id"]: row for row in map(json.loads, samples_file.read_text().splitlines())}
    assert sorted(logged) == list(range(len(records)))  # every document once, whatever the number of ranks
    for doc_id, row in logged.items():
        if margins[doc_id] > 1e-4:  # other batches pad differently: a near-tie could fall either way
            assert row["filtered_resps"] == answers[doc_id], (doc_id, row["filtered_resps"], margins[doc_id])

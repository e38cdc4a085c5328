"""MindCube (`mindcube-full` = MindCube-Tiny) end to end on the tiny run's model, from a fixture in the raw layout of
its `data.zip` (`data/raw/MindCube_tinybench.jsonl` + `data/other_all_image/...`): settings from the id in MindCube's
order, options split off the question, `meta_info` kept out of the prompt, an item with more views than the 2
keyframe slots, translation / other excluded from the overall, the accuracies recomputed by hand; and the full set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError
from prismatic.eval.benchmarks.mindcube import MindCube, MindCubeAll, setting_from_id, split_question

QUIET = {"log": lambda _: None}
INSTRUCTION = "Answer with the option's letter from the given choices directly."

ROWS = [
    {"id": "among_group1_q1_1", "n": 4, "gt_answer": "B",
     "question": "Based on these four images (image 1, 2, 3, and 4) showing the sofa from different viewpoints, "
                 "what is behind the sofa? A. Lamp B. Plant C. Table D. Door"},
    {"id": "among_group2_q2_1", "n": 2, "gt_answer": "A",
     "question": "From image 2, is the chair on your left or right?\nA. Left\nB. Right"},
    {"id": "around_group3_among_q1", "n": 3, "gt_answer": "C",  # 'around' is tested before 'among'
     "question": "After walking around the table, which object is closest? A. Cup B. Book C. Vase"},
    {"id": "rotation_group4_q1", "n": 2, "gt_answer": "A",
     "question": "If you rotate 90 degrees to the right, what is in front of you? A. Window B. Wall"},
    {"id": "translation_group5_q1", "n": 2, "gt_answer": "B",
     "question": "After moving forward, what is on the left? A. Bed B. Desk"},
    {"id": "misc_group6_q1", "n": 2, "gt_answer": "D",
     "question": "Which view shows the door (options are described in the images)?"},
]  # fmt: skip


def image_names(row: dict) -> list[str]:
    setting = row["id"].split("_")[0]
    return [f"other_all_image/{setting}/{row['id']}/{k}.jpg" for k in range(row["n"])]


def write_mindcube_raw(data_root: Path, filename: str = "MindCube_tinybench.jsonl") -> Path:
    raw = data_root / "mindcube" / "download" / "data"
    lines = []
    for i, row in enumerate(ROWS):
        for k, name in enumerate(image_names(row)):
            write_image(raw / name, 10 * i + k)
        lines.append({"id": row["id"], "category": ["viewpoint"], "type": "self", "question": row["question"],
                      "meta_info": [[row["n"]], ["SECRET-META"]], "images": image_names(row),
                      "gt_answer": row["gt_answer"]})  # fmt: skip
    (raw / "raw").mkdir(parents=True, exist_ok=True)
    (raw / "raw" / filename).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return raw


def test_setting_from_id_follows_mindcube_order() -> None:
    assert setting_from_id("among_x") == "among"
    assert setting_from_id("Around_among_x") == "around"
    assert setting_from_id("rotation_among") == "rotation"
    assert setting_from_id("among_translation") == "translation"
    assert setting_from_id("aroundnew_1") == "around"
    assert setting_from_id("x_y") == "other"
    assert split_question("Q? A. Left B. Right") == ("Q?", ["Left", "Right"])
    assert split_question("Q?\nA.Left\nB.Right\nC.Up") == ("Q?", ["Left", "Right", "Up"])
    assert split_question("Which? A. Left") is None


def test_mindcube_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    data_root, results = tmp_path / "data", tmp_path / "results"
    write_mindcube_raw(data_root)
    benchmark = MindCube(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, data_root, results)

    records = benchmark.load_records(data_root)
    assert list(records) == [r["id"] for r in ROWS]
    assert records[ROWS[0]["id"]]["img_paths"] == [f"mindcube/download/data/{p}" for p in image_names(ROWS[0])]
    settings = {qid: r["setting"] for qid, r in records.items()}
    assert list(settings.values()) == ["among", "among", "around", "rotation", "translation", "other"]

    items = {item.id: item for item in benchmark.items(records)}
    assert items["among_group1_q1_1"].message == (
        "Based on these four images (image 1, 2, 3, and 4) showing the sofa from different viewpoints, what is behind "
        f"the sofa?\nA. Lamp\nB. Plant\nC. Table\nD. Door\n{INSTRUCTION}"
    )
    assert items["among_group2_q2_1"].message == (
        f"From image 2, is the chair on your left or right?\nA. Left\nB. Right\n{INSTRUCTION}"
    )
    assert items["around_group3_among_q1"].candidates == ("A", "B", "C")
    assert items["misc_group6_q1"].candidates == ("A", "B", "C", "D")  # not splittable: whole question, A-D
    assert items["misc_group6_q1"].message == f"{ROWS[-1]['question']}\n{INSTRUCTION}"
    assert not any("SECRET" in item.message for item in items.values())

    # By hand: per setting; overall over among + around + rotation only.
    hits = {r["id"]: predictions[r["id"]].answer == r["gt_answer"] for r in ROWS}
    by_setting = {"among": ROWS[:2], "around": [ROWS[2]], "rotation": [ROWS[3]], "translation": [ROWS[4]],
                  "other": [ROWS[5]]}  # fmt: skip
    for setting, rows in by_setting.items():
        assert metrics[f"accuracy__MindCube-{setting}"] == pytest.approx(
            100 * sum(hits[r["id"]] for r in rows) / len(rows))  # fmt: skip
    overall = [hits[r["id"]] for r in ROWS[:4]]
    assert metrics["accuracy__MindCube-Accuracy"] == pytest.approx(100 * sum(overall) / 4)

    folder = results / tiny_fingerprint.tag / "mindcube"
    run = json.loads((folder / "run.json").read_text())
    assert run["multi_image"]["items_with_more_images_than_slots"] == 2  # the 4-view and the 3-view items
    payload = json.loads((folder / "results.json").read_text())
    assert payload["counts"]["MindCube (overall)"] == 4
    assert any("cannot be reproduced from its columns" in note for note in payload["notes"])


def test_mindcube_counts_missing_file_and_full_set(tmp_path: Path) -> None:
    raw = write_mindcube_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 6 questions in MindCube_tinybench\.jsonl, the protocol "
                                                 r"expects 1050"):  # fmt: skip
        MindCube().prepare(tmp_path / "data", **QUIET)
    (raw / "raw" / "MindCube_tinybench.jsonl").unlink()
    with pytest.raises(BenchmarkDataError, match=r"data/raw/MindCube_tinybench\.jsonl is missing.*MLL-Lab/MindCube"):
        MindCube(strict_counts=False).prepare(tmp_path / "data", **QUIET)

    # The full set: MindCube.jsonl from the same zip, metadata-all.json, only its total checked.
    write_mindcube_raw(tmp_path / "data", "MindCube.jsonl")
    with pytest.raises(BenchmarkDataError, match="expects 21154"):
        MindCubeAll().prepare(tmp_path / "data", **QUIET)
    path = MindCubeAll(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    assert path.name == "metadata-all.json" and len(json.loads(path.read_text())) == len(ROWS)


def test_split_question_on_real_questions() -> None:
    """MindCube questions as public code quotes them verbatim: an `among` four-view question (the black sneaker) and
    the pair-displacement template (the `among_group002_q0_1_1` example of a public MindCube loader's README)."""
    sneaker = ("Based on these four images (image 1, 2, 3, and 4) showing the black sneaker from different viewpoints "
               "(front, left, back, and right), with each camera aligned with room walls and partially capturing the "
               "surroundings: From the viewpoint presented in image 2, what is to the right of the black sneaker? "
               "A. TV B. Wooden dining table C. Light purple sofa D. Brown curtains and windows")  # fmt: skip
    stem, options = split_question(sneaker)
    assert stem.endswith("From the viewpoint presented in image 2, what is to the right of the black sneaker?")
    assert options == ["TV", "Wooden dining table", "Light purple sofa", "Brown curtains and windows"]
    pair = ("Based on these two views showing the same scene: in which direction did I move from the first view to "
            "the second view? A. Directly left B. Diagonally forward and right C. Diagonally forward and left "
            "D. Directly right")  # fmt: skip
    assert split_question(pair) == (
        "Based on these two views showing the same scene: in which direction did I move from the first view to the "
        "second view?",
        ["Directly left", "Diagonally forward and right", "Diagonally forward and left", "Directly right"],
    )

"""VSR (`vsr-full`) on verbatim lines of cambridgeltl/visual-spatial-reasoning `data/splits/zeroshot/test.jsonl`
(tiny generated images): the statement prompt, the True/False gold from `label`, and the relation -> meta-category
join (including the real file's "andbag" subject typo, which the parser does not use)."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import write_image

from prismatic.eval.benchmark import Prediction
from prismatic.eval.benchmarks.vsr import RELATION_TO_CATEGORY, VSR

QUIET = {"log": lambda _: None}

# Lines 1-3, 5 and 34 of the 1,222-line file (commit af55c2c), as they are.
REAL_LINES = [
    '{"image": "000000017697.jpg", "image_link": "http://images.cocodataset.org/train2017/000000017697.jpg", "caption": '
    '"The car is behind the suitcase.", "label": 1, "relation": "behind", "subj": "car", "obj": "suitcase", '
    '"annotator_id": 2, "vote_true_validator_id": "[18, 2]", "vote_false_validator_id": "[1]"}',
    '{"image": "000000199940.jpg", "image_link": "http://images.cocodataset.org/train2017/000000199940.jpg", "caption": '
    '"The cat is under the backpack.", "label": 0, "relation": "under", "subj": "cat", "obj": "backpack", '
    '"annotator_id": 1, "vote_true_validator_id": "[]", "vote_false_validator_id": "[2, 51, 26]"}',
    '{"image": "000000470862.jpg", "image_link": "http://images.cocodataset.org/train2017/000000470862.jpg", "caption": '
    '"The handbag is right of the cat.", "label": 0, "relation": "right of", "subj": "andbag", "obj": "cat", '
    '"annotator_id": 29, "vote_true_validator_id": "[2]", "vote_false_validator_id": "[53, 19]"}',
    '{"image": "000000078741.jpg", "image_link": "http://images.cocodataset.org/train2017/000000078741.jpg", "caption": '
    '"The cat is facing the keyboard.", "label": 0, "relation": "facing", "subj": "cat", "obj": "keyboard", '
    '"annotator_id": 29, "vote_true_validator_id": "[]", "vote_false_validator_id": "[28, 2, 60]"}',
    '{"image": "000000018819.jpg", "image_link": "http://images.cocodataset.org/train2017/000000018819.jpg", "caption": '
    '"The cat is facing away from the toilet.", "label": 1, "relation": "facing away from", "subj": "cat", "obj": '
    '"toilet", "annotator_id": 29, "vote_true_validator_id": "[1, 2, 62]", "vote_false_validator_id": "[]"}',
]


def test_vsr_real_lines(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "vsr" / "download"
    for i, name in enumerate(["000000017697", "000000199940", "000000470862", "000000078741", "000000018819"]):
        write_image(raw / "images" / f"{name}.jpg", i)
    (raw / "test.jsonl").write_text("".join(line + "\n" for line in REAL_LINES))
    VSR(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    records = VSR().load_records(tmp_path / "data")
    assert [r["true_false"] for r in records.values()] == [True, False, False, False, True]
    assert records["0"]["img_path"] == "vsr/download/images/000000017697.jpg"
    assert [RELATION_TO_CATEGORY[r["relation"]] for r in records.values()] == [
        "Projective", "Projective", "Projective", "Orientation", "Orientation"]  # fmt: skip
    item = VSR().items(records)[4]
    assert item.message.startswith('Based on the image, is this statement "True" or "False"? The cat is facing away '
                                   "from the toilet.\n")  # fmt: skip
    assert item.candidates == ("True", "False")
    answers = ["True", "True", "False", "False", "False"]  # right, wrong, right, right, wrong
    scores = VSR().score(records, {str(i): Prediction(str(i), a) for i, a in enumerate(answers)})
    assert scores.metrics["accuracy__VSR-ExactMatch"] == 60.0
    assert scores.metrics["accuracy__VSR-Projective"] == 100 * 2 / 3
    assert scores.metrics["accuracy__VSR-Orientation"] == 50.0
    assert scores.counts == {"VSR": 5, "Projective": 3, "Orientation": 2}

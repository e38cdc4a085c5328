"""SAT, Spatial Aptitude Training, synthetic validation split (`sat-full`: 4,001 questions over ProcTHOR renders, 1-2
images each, usually 2 answer options): the paper's Table 1 (Obj Move. / Act. Seq. / Act. Cons. / Goal Aim / Persp. /
Avg). "SAT-Synthetic" is the `val` split (the authors' lmms-eval config reads `test_split: val`), not `test` (150 real
images).

Raw file (`<data_root>/sat/download/`): `SAT_val.parquet` from the hub dataset array/SAT (its `val` split; columns
`image_bytes` (a list of 1-2 images, datasets `Image` structs `{"bytes": ..., "path": ...}` or plain bytes),
`question`, `answers` (list of strings), `correct_answer` (one of `answers`), `question_type`). `prepare` writes the
images to `download/images/val_<row>_<k>.<png|jpg>` (row = position in the file, which is also the qid and
`example_id`) and the records name them in dataset order. Reading the parquet needs pyarrow (`pip install -e .[eval]`).
Licence MIT.

Counts: 4,001 questions (checked). The per-type counts are not published; `prepare` logs them, and the paper's Avg
(item-weighted, not the mean of its five columns) suggests Act. Cons. has about twice the items of the others. The
authors' upload script (arijitray1993/r2d3 `scripts/3d_reasoning_qas/huggingface/upload_data_hf.py`) stops the val
perspective questions at 779 (UNVERIFIED against the hub file).

Protocol (vlm-evaluation's closed form, as the paper scored DyVA): the options are `answers` in a fixed per-item
shuffled order (below), lettered A, B, ...; the user message is `multiple_choice_prompt(question, options)`
("{question}\\nA. {a1}\\nB. {a2}\\nAnswer with the option's letter from the given choices directly."), the candidates
are the letters, the prediction is the argmax of the first generated token's probability over them, correct = the
letter of `correct_answer` among the options (exact match, else after stripping and case-folding; no match is a data
error).

Why shuffled: the authors' upload script (above) writes `correct_answer = answers[0]`, so in file order the gold letter
would be A for every item and a model that always says "A" would score 100%; the array/SAT card asks users to randomise
the answers or evaluate circularly. The order is `random.Random(f"sat-{example_id}").shuffle` of the answers (string
seeds are hashed with SHA-512 by Python, so the order is the same on every machine and run); the metadata keeps the
file's order too (`answers_in_file_order`), and `prepare` logs (and the results' notes give) the share of items whose
gold letter is A (about 1/2 with two options). How the authors' fork ordered the options is not known.

The upload script also says how `question_type` is set: from the question's text (case-folded
substrings, later rules win): "how did the camera" / "is the camera moving" -> action_sequence, "need to go" ->
goal_aim, "any of the objects in the initial" -> obj_movement, "if i" -> action_consequence, "if i move to the" / "for
someone at the" -> perspective, anything else -> other. Real example (a train question, as quoted in the R4D paper):
"Were any of the objects in the initial frame that you can still see in the second frame moved from their original
positions?", answers "green tapered square potted houseplant was moved right and towards the camera in the first frame"
/ "... moved left and away from ...", correct the first, type obj_movement.

Columns (question_type -> paper header): obj_movement -> "Obj Move.", action_sequence -> "Act. Seq." (the camera-
movement questions), action_consequence -> "Act. Cons.", goal_aim -> "Goal Aim", perspective -> "Persp.". Other
copies of SAT name the camera-movement type `ego_movement`; a split with no `action_sequence` fills "Act. Seq." from
it, and the results' note flags that as UNVERIFIED. Every type gets `accuracy__SAT-<question_type>`; the "Act. Seq."
cell is `accuracy__SAT-Act. Seq.`; Avg is `accuracy__SAT-Accuracy`, the micro average over all items (types outside
the columns, such as `other`, included).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from prismatic.eval.benchmark import (
    Benchmark,
    BenchmarkDataError,
    EvalItem,
    Log,
    Prediction,
    RawFile,
    Records,
    Scores,
    accuracy,
    letters,
    relative_to_root,
    require_predictions,
)
from prismatic.eval.prompts import multiple_choice_prompt
from prismatic.eval.raw_formats import image_bytes, parquet_rows, write_if_changed

SAT_ITEMS = 4001
PARQUET = "SAT_val.parquet"
# Paper column -> the question types that can fill it, in order of preference (the first present in the data wins).
COLUMN_TYPES: dict[str, tuple[str, ...]] = {
    "Obj Move.": ("obj_movement",),
    "Act. Seq.": ("action_sequence", "ego_movement"),  # ego_movement is an UNVERIFIED fallback (module docstring)
    "Act. Cons.": ("action_consequence",),
    "Goal Aim": ("goal_aim",),
    "Persp.": ("perspective",),
}
ACT_SEQ_KEY = "accuracy__SAT-Act. Seq."
AVERAGE_KEY = "accuracy__SAT-Accuracy"


def type_key(question_type: str) -> str:
    return f"accuracy__SAT-{question_type}"


def column_types(types: set[str]) -> dict[str, str]:
    """Paper column -> the question type that fills it, for the types present."""
    chosen = {}
    for column, preferred in COLUMN_TYPES.items():
        present = [t for t in preferred if t in types]
        if present:
            chosen[column] = present[0]
    return chosen


def answer_index(answers: list[str], correct: str) -> int | None:
    if correct in answers:
        return answers.index(correct)
    folded = [a.strip().casefold() for a in answers]
    return folded.index(correct.strip().casefold()) if correct.strip().casefold() in folded else None


def image_suffix(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


class SAT(Benchmark):
    name = "sat"
    dataset_id = "sat-full"
    title = "SAT (synthetic val)"
    directory = "sat"
    variant = "full"
    raw_files = (
        RawFile(PARQUET, "https://huggingface.co/datasets/array/SAT (SAT_val.parquet, the `val` split)",
                "4,001 questions; the images are inside it"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (
        ("Obj Move.", type_key("obj_movement")), ("Act. Seq.", ACT_SEQ_KEY),
        ("Act. Cons.", type_key("action_consequence")), ("Goal Aim", type_key("goal_aim")),
        ("Persp.", type_key("perspective")), ("Avg.", AVERAGE_KEY),
    )  # fmt: skip
    licence = "MIT."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        path = self.require(raw_dir, PARQUET)
        rows = list(parquet_rows(path, self.title, ["question", "answers", "correct_answer", "question_type"]))
        self.check_count(f"questions in {PARQUET}", len(rows), SAT_ITEMS, log)
        records: Records = {}
        for example_id, row in enumerate(rows):
            answers = [str(a) for a in row["answers"] or []]
            index = answer_index(answers, str(row["correct_answer"]))
            if index is None:
                raise BenchmarkDataError(f"{self.title}: row {example_id}: correct_answer {row['correct_answer']!r} "
                                         f"is not one of its answers {answers}.")  # fmt: skip
            order = option_order(example_id, len(answers))
            records[str(example_id)] = {
                "example_id": example_id,
                "question": str(row["question"]),
                "choices": [answers[i] for i in order],
                "answers_in_file_order": answers,
                "correct_answer": str(row["correct_answer"]),
                "answer": letters(len(answers))[order.index(index)],
                "question_type": str(row["question_type"]),
                "img_paths": [],
                "split": "val",
                "dataset": "SAT",
            }
        for example_id, row in enumerate(parquet_rows(path, self.title, ["image_bytes"])):  # a batch at a time
            for k, cell in enumerate(row["image_bytes"] or []):
                data = image_bytes(cell, self.title)
                image = raw_dir / "images" / f"val_{example_id}_{k}{image_suffix(data)}"
                write_if_changed(image, data)
                records[str(example_id)]["img_paths"].append(relative_to_root(image, data_root))
        if any(not r["img_paths"] for r in records.values()):
            raise BenchmarkDataError(f"{self.title}: some questions in {PARQUET} have no images.")
        types = Counter(r["question_type"] for r in records.values())
        log(f"[prepare] sat: question types {dict(sorted(types.items()))}; columns {column_types(set(types))}")
        log(f"[prepare] sat: {gold_letter_note(records)}")
        return records

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, multiple_choice_prompt(r["question"], r["choices"]), tuple(r["img_paths"]),
                     letters(len(r["choices"])))
            for qid, r in records.items()
        ]  # fmt: skip

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {qid: predictions[qid].answer == r["answer"] for qid, r in records.items()}
        metrics = {AVERAGE_KEY: accuracy(list(correct.values()))}
        counts = {"SAT": len(records)}
        known = [t for types in COLUMN_TYPES.values() for t in types]
        present = {r["question_type"] for r in records.values()}
        for question_type in [t for t in known if t in present] + sorted(present - set(known)):
            members = [qid for qid, r in records.items() if r["question_type"] == question_type]
            metrics[type_key(question_type)] = accuracy([correct[qid] for qid in members])
            counts[question_type] = len(members)
        chosen = column_types(present)
        notes = ["Avg. = micro average over all items."]
        if "Act. Seq." in chosen:
            metrics[ACT_SEQ_KEY] = metrics[type_key(chosen["Act. Seq."])]
            fallback = chosen["Act. Seq."] != "action_sequence"
            unverified = " (UNVERIFIED mapping of the paper's column)" if fallback else ""
            notes.append(f"Act. Seq. = question_type {chosen['Act. Seq.']!r}{unverified}.")
        outside = sorted(present - set(chosen.values()))
        if outside:
            notes.append(f"Question types in no paper column (counted in Avg. only): {outside}.")
        notes.append(gold_letter_note(records))
        return Scores(metrics, counts, notes)


def option_order(example_id: int, count: int) -> list[int]:
    """The fixed order in which an item's answers are offered (file positions), the same on every machine."""
    order = list(range(count))
    random.Random(f"sat-{example_id}").shuffle(order)
    return order


def gold_letter_note(records: Records) -> str:
    share = 100.0 * sum(r["answer"] == "A" for r in records.values()) / max(len(records), 1)
    return f"The gold letter is A for {share:.1f}% of items (answers offered in a fixed per-item shuffled order)."

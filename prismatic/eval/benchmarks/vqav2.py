"""VQAv2, val split, vlm-evaluation's `vqa-v2-slim` subset (1,024 of the 214,354 val questions): open-ended questions
about COCO val2014 images, answered in a word or phrase. The paper's Tables 3/5/6 "VQAv2" column.

Raw files (`<data_root>/vqa-v2/download/`): `v2_OpenEnded_mscoco_val2014_questions.json` (from the VQA site's
`v2_Questions_Val_mscoco.zip`), `v2_mscoco_val2014_annotations.json` (`v2_Annotations_Val_mscoco.zip`) and
`val2014/COCO_val2014_%012d.jpg` (COCO's `val2014.zip`; only the selected items' images are needed).

Protocol (vlm-evaluation): one record per annotation, in annotations-file order (its index is built by walking the
annotations; the questions file only supplies the text), 214,354 questions over 40,504 images; the slim subset is the
first 1,024 ids of the `random.Random(21)` shuffle (`prismatic.eval.slim`). `vqa_prompt`, greedy generation (at most
128 new tokens, vlm-evaluation's default). Score: the official VQA soft accuracy over the 10 annotators' answers
(`prismatic.eval.vqa_normalize.vqa_accuracy`) x 100 (`accuracy__VQAv2-Accuracy`, the paper's cell), and per answer
type (yes/no, number, other). vlm-evaluation rounds to 2 decimals at the end; we keep full precision.
"""

from __future__ import annotations

import json
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
    relative_to_root,
    require_predictions,
)
from prismatic.eval.prompts import vqa_prompt
from prismatic.eval.slim import SLIM_SIZE, slim_ids
from prismatic.eval.vqa_normalize import mean_percent, vqa_accuracy

VQAV2_QUESTIONS, VQAV2_IMAGES = 214354, 40504
QUESTIONS_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_val2014_annotations.json"
ANSWER_TYPES = ("yes/no", "number", "other")


def answer_type_key(answer_type: str) -> str:
    return f"accuracy__VQAv2-{answer_type}"


class VQAv2(Benchmark):
    name = "vqa-v2"
    dataset_id = "vqa-v2-slim"
    title = "VQAv2 (val, slim 1,024)"
    directory = "vqa-v2"
    variant = "slim-1024"
    slim_size: int = SLIM_SIZE  # an instance may lower it (tests)
    raw_files = (
        RawFile(QUESTIONS_FILE, "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Questions_Val_mscoco.zip",
                "https://visualqa.org/download.html; 214,354 questions"),
        RawFile(ANNOTATIONS_FILE, "https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/v2_Annotations_Val_mscoco.zip",
                "10 answers per question"),
        RawFile("val2014/", "http://images.cocodataset.org/zips/val2014.zip", "COCO_val2014_%012d.jpg, 40,504 images"),
    )  # fmt: skip
    max_new_tokens = 128
    columns = (("VQAv2", "accuracy__VQAv2-Accuracy"),)
    licence = "VQA annotations: CC BY 4.0; images: COCO (Flickr terms)."

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        questions = json.loads(self.require(raw_dir, QUESTIONS_FILE).read_text(encoding="utf-8"))["questions"]
        annotations = json.loads(self.require(raw_dir, ANNOTATIONS_FILE).read_text(encoding="utf-8"))["annotations"]
        text_of = {int(q["question_id"]): q["question"] for q in questions}
        records: Records = {}
        for annotation in annotations:
            qid = int(annotation["question_id"])
            if qid not in text_of:
                raise BenchmarkDataError(
                    f"{self.title}: question {qid} of {ANNOTATIONS_FILE} is not in {QUESTIONS_FILE}; the two files "
                    f"come from different releases. {self.download_help(raw_dir)}"
                )
            image = raw_dir / "val2014" / f"COCO_val2014_{int(annotation['image_id']):012d}.jpg"
            records[str(qid)] = {
                "question_id": qid,
                "question": text_of[qid],
                "img_path": relative_to_root(image, data_root),
                "answer": annotation["multiple_choice_answer"],
                "question_type": annotation["question_type"],
                "answer_type": annotation["answer_type"],
                "all_answers": [a["answer"] for a in annotation["answers"]],
            }
        self.check_count(f"questions in {ANNOTATIONS_FILE}", len(records), VQAV2_QUESTIONS, log)
        self.check_count("distinct images", len({r["img_path"] for r in records.values()}), VQAV2_IMAGES, log)
        if [int(q["question_id"]) for q in questions] != [r["question_id"] for r in records.values()]:
            log(f"[prepare] vqa-v2: NOTE {QUESTIONS_FILE} lists the questions in another order than {ANNOTATIONS_FILE};"
                " the slim subset follows the annotations' order, as vlm-evaluation does.")  # fmt: skip
        return {qid: records[qid] for qid in slim_ids(list(records), self.slim_size)}

    def items(self, records: Records) -> list[EvalItem]:
        return [EvalItem(qid, vqa_prompt(r["question"]), (r["img_path"],)) for qid, r in records.items()]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        scores = {qid: vqa_accuracy(predictions[qid].answer, r["all_answers"]) for qid, r in records.items()}
        metrics = {"accuracy__VQAv2-Accuracy": mean_percent(list(scores.values()))}
        counts = {"VQAv2": len(records)}
        others = sorted({r["answer_type"] for r in records.values()} - set(ANSWER_TYPES))
        for answer_type in (*ANSWER_TYPES, *others):
            members = [qid for qid, r in records.items() if r["answer_type"] == answer_type]
            if members:
                metrics[answer_type_key(answer_type)] = mean_percent([scores[qid] for qid in members])
                counts[answer_type] = len(members)
        return Scores(metrics, counts)

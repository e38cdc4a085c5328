"""TallyQA, counting questions on the test set, as the paper scored it: `tally-qa-slim`, 1,024 "simple" + 1,024
"complex" questions (2,048) drawn from the 38,589 test questions. The paper's Table 2 "TallyQA Avg" (and Tables 3/5/6)
is the pooled accuracy over these 2,048 items (every printed value is an exact k/2048).

Raw files (`<data_root>/tallyqa/download/`): `test.json` from manoja328/tallyqa `tallyqa.zip`
(https://github.com/manoja328/tallyqa/blob/master/tallyqa.zip?raw=true; 38,589 questions: 22,991 simple and 15,598
complex, the TallyQA paper's split sizes), and the images its records name in their `image` field, relative to the
download folder: Visual Genome `VG_100K/` and `VG_100K_2/` (https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip
and images2.zip; vlm-evaluation downloads only these two) and, should a record name one, COCO `train2014/` /
`val2014/`. A raw record: {"question_id", "question", "image": "VG_100K_2/2410408.jpg", "answer": 4, "issimple": bool,
"image_id", "data_source"}.

Slim subset (vlm-evaluation's rule, `prismatic.eval.slim`): the records keyed by question id in raw-file order (a
repeated question id keeps its first position and its last record, as a dict does), the id list shuffled with
`random.Random(21)`, then the first 1,024 ids of each split (split = "simple" if `issimple` else "complex") walking the
shuffled list; the metadata keeps that shuffled order. Only the selected items' images must be present.

Protocol (vlm-evaluation, `mc_prompt_fn`): the question followed by the 16 lettered choices "A. 0" ... "P. 15" and the
letter instruction (`multiple_choice_prompt`); closed form over the letters A..P at the first generated token; the
predicted count is the letter's index, correct when it equals `answer`. Metrics: `accuracy__TallyQA-simple-Accuracy`,
`accuracy__TallyQA-complex-Accuracy` and `accuracy__TallyQA-final-Accuracy`, the last pooled over all items (with two
1,024-item splits it equals their mean); the paper's "Avg." is the final accuracy. vlm-evaluation also reports
one-vs-one multi-class AUROC / AUPR, which the paper does not use; they are not computed here. Answers above 15 cannot
be predicted (the choices stop at 15): they count as wrong and their number is reported in the notes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from prismatic.eval.benchmark import (
    Benchmark,
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
from prismatic.eval.slim import SLIM_SIZE, slim_ids_per_split

TALLYQA_TEST_QUESTIONS = 38589
SPLIT_COUNTS = {"simple": 22991, "complex": 15598}
SPLITS = ("simple", "complex")
MAX_COUNT = 15
CHOICES = tuple(str(n) for n in range(MAX_COUNT + 1))  # "0" .. "15"
CANDIDATES = letters(len(CHOICES))  # "A" .. "P"


class TallyQA(Benchmark):
    name = "tallyqa"
    dataset_id = "tally-qa-slim"
    title = "TallyQA (test, slim: 1,024 simple + 1,024 complex)"
    directory = "tallyqa"
    variant = "slim-1024"
    raw_files = (
        RawFile("test.json", "https://github.com/manoja328/tallyqa/blob/master/tallyqa.zip?raw=true",
                "unzip it; 38,589 questions"),
        RawFile("VG_100K/", "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip",
                "Visual Genome images, part 1"),
        RawFile("VG_100K_2/", "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip",
                "Visual Genome images, part 2"),
        RawFile("train2014/, val2014/", "http://images.cocodataset.org/zips/train2014.zip and val2014.zip",
                "only if a selected record names a COCO image"),
    )  # fmt: skip
    max_new_tokens = 1
    columns = (
        ("Simple", "accuracy__TallyQA-simple-Accuracy"),
        ("Complex", "accuracy__TallyQA-complex-Accuracy"),
        ("Avg.", "accuracy__TallyQA-final-Accuracy"),
    )
    licence = "TallyQA annotations: no licence stated; images: Visual Genome (CC BY 4.0) and COCO (Flickr terms)."
    slim_size: int = SLIM_SIZE  # items per split (tests lower it on an instance)

    def build_records(self, raw_dir: Path, data_root: Path, log: Log) -> Records:
        rows = json.loads(self.require(raw_dir, "test.json").read_text(encoding="utf-8"))
        self.check_count("questions in test.json", len(rows), TALLYQA_TEST_QUESTIONS, log)
        index: Records = {}
        for row in rows:
            qid = str(int(row["question_id"]))
            index[qid] = {
                "question_id": int(row["question_id"]),
                "question": row["question"],
                "img_path": relative_to_root(raw_dir / row["image"], data_root),
                "answer": int(row["answer"]),
                "split": "simple" if row["issimple"] else "complex",
            }
        if len(index) != len(rows):
            log(f"[prepare] WARNING tallyqa: {len(rows) - len(index)} repeated question ids in test.json; each keeps "
                "its first position and its last record (vlm-evaluation's dict does the same).")  # fmt: skip
        for split in SPLITS:
            found = sum(r["split"] == split for r in index.values())
            self.check_count(f"{split} questions", found, SPLIT_COUNTS[split], log)
        selected = slim_ids_per_split(list(index), lambda qid: index[qid]["split"], size=self.slim_size)
        return {qid: index[qid] for qid in selected}

    def items(self, records: Records) -> list[EvalItem]:
        return [
            EvalItem(qid, multiple_choice_prompt(r["question"], CHOICES), (r["img_path"],), CANDIDATES)
            for qid, r in records.items()
        ]

    def score(self, records: Records, predictions: Mapping[str, Prediction]) -> Scores:
        require_predictions(records, predictions)
        correct = {}
        for qid, r in records.items():
            answer = predictions[qid].answer
            predicted = CANDIDATES.index(answer) if answer in CANDIDATES else None
            correct[qid] = predicted == int(r["answer"])
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        for split in SPLITS:
            members = [qid for qid, r in records.items() if r["split"] == split]
            if members:
                metrics[f"accuracy__TallyQA-{split}-Accuracy"] = accuracy([correct[qid] for qid in members])
                counts[split] = len(members)
        metrics["accuracy__TallyQA-final-Accuracy"] = accuracy(list(correct.values()))
        counts["TallyQA"] = len(records)
        notes = []
        beyond = [qid for qid, r in records.items() if int(r["answer"]) > MAX_COUNT]
        if beyond:
            notes.append(f"{len(beyond)} item(s) have an answer above {MAX_COUNT}, which no choice offers: they "
                         "count as wrong.")  # fmt: skip
        return Scores(metrics, counts, notes)

"""3DSRBench (`3dsr-full`, the real = MS-COCO split) end to end on the tiny run's model, from a fixture in the raw
`3dsrbench_v1-00000-of-00001.parquet` format with the COCO images beside it: synthetic rows dropped, 2-4 options from
the non-empty A-D, categories mapped to the paper's H / L / O / M, per-row and circular accuracy recomputed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import run_family, write_image

from prismatic.eval.benchmark import BenchmarkDataError
from prismatic.eval.benchmarks.threedsr import ThreeDSR

QUIET = {"log": lambda _: None}
INSTRUCTION = "Answer with the option's letter from the given choices directly."
COCO = "http://images.cocodataset.org/train2017/"

# (qid, category, options A-D (None = absent), answer, image source)
ROWS = [
    ("Q1", "height_higher", ["the glove", "the red hat", None, None], "B", "MS-COCO"),
    ("Q1-flip", "height_higher", ["the red hat", "the glove", None, None], "A", "MS-COCO"),
    ("Q2", "location_above", ["yes", "no", None, None], "A", "MS-COCO"),
    ("Q3", "location_next_to", ["yes", "no", None, None], "B", "MS-COCO"),
    ("Q4", "orientation_viewpoint", ["left", "right", "front", "back"], "C", "MS-COCO"),
    ("Q5", "multi_object_facing", ["the dog", "the cat", "the bird", None], "C", "MS-COCO"),
    ("Q6", "multi_object_parallel", ["yes", "no", None, None], "A", "MS-COCO"),
    ("Q7", "location_above", ["yes", "no", None, None], "B", "HSSD"),  # synthetic: not in the real split
]


def write_3dsr_raw(data_root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = data_root / "3dsrbench" / "download"
    urls = [f"{COCO}{i:012d}.jpg" for i in range(len(ROWS))]
    for i, url in enumerate(urls):
        if ROWS[i][4] == "MS-COCO":
            write_image(raw / "images" / url.rsplit("/", 1)[-1], i)
    table = pa.table({
        "index": list(range(len(ROWS))),
        "qid": [r[0] for r in ROWS],
        "question": [f"Consider the real-world 3D locations of the objects. Question {r[0]}?" for r in ROWS],
        **{letter: [r[2][k] for r in ROWS] for k, letter in enumerate("ABCD")},
        "answer": [r[3] for r in ROWS],
        "category": [r[1] for r in ROWS],
        "image_source": [r[4] for r in ROWS],
        "image_url": urls,
    })  # fmt: skip
    pq.write_table(table, raw / "3dsrbench_v1-00000-of-00001.parquet")
    return raw


def test_3dsr_end_to_end(tmp_path: Path, tiny_vlm, tiny_fingerprint) -> None:
    data_root, results = tmp_path / "data", tmp_path / "results"
    write_3dsr_raw(data_root)
    benchmark = ThreeDSR(strict_counts=False)
    metrics, predictions = run_family(benchmark, tiny_vlm, tiny_fingerprint, data_root, results)

    records = benchmark.load_records(data_root)
    real = [r for r in ROWS if r[4] == "MS-COCO"]
    assert list(records) == [r[0] for r in real]
    assert records["Q2"]["img_path"] == "3dsrbench/download/images/000000000002.jpg"

    items = {item.id: item for item in benchmark.items(records)}
    assert items["Q5"].message == ("Consider the real-world 3D locations of the objects. Question Q5?\nA. the dog\n"
                                   f"B. the cat\nC. the bird\n{INSTRUCTION}")  # fmt: skip
    assert items["Q5"].candidates == ("A", "B", "C") and items["Q4"].candidates == ("A", "B", "C", "D")
    assert items["Q1"].candidates == ("A", "B") and items["Q1"].images == ("3dsrbench/download/images/000000000000.jpg",)

    # By hand: per row; per column (H / L / O / M); micro average; circular over base questions.
    hits = {r[0]: predictions[r[0]].answer == r[3] for r in real}
    columns = {"Height": ["Q1", "Q1-flip"], "Location": ["Q2", "Q3"], "Orientation": ["Q4"],
               "MultiObject": ["Q5", "Q6"]}  # fmt: skip
    for name, members in columns.items():
        assert metrics[f"accuracy__3DSR-{name}"] == pytest.approx(100 * sum(hits[q] for q in members) / len(members))
    assert metrics["accuracy__3DSR-location_above"] == pytest.approx(100 * hits["Q2"])
    assert metrics["accuracy__3DSR-Accuracy"] == pytest.approx(100 * sum(hits.values()) / len(real))
    bases = [hits["Q1"] and hits["Q1-flip"], *(hits[q] for q in ("Q2", "Q3", "Q4", "Q5", "Q6"))]
    assert metrics["accuracy__3DSR-Circular"] == pytest.approx(100 * sum(bases) / len(bases))

    folder = results / tiny_fingerprint.tag / "3dsrbench"
    run = json.loads((folder / "run.json").read_text())
    assert run["multi_image"]["items_with_more_images_than_slots"] == 0
    counts = json.loads((folder / "results.json").read_text())["counts"]
    assert counts == {"3DSR": 7, "H.": 2, "L.": 2, "O.": 1, "M.": 2, "base questions": 6}


def test_3dsr_counts_and_missing_files(tmp_path: Path) -> None:
    raw = write_3dsr_raw(tmp_path / "data")
    with pytest.raises(BenchmarkDataError, match=r"found 7 real \(MS-COCO\) rows .* expects 2625"):
        ThreeDSR().prepare(tmp_path / "data", **QUIET)
    (raw / "images" / "000000000004.jpg").unlink()
    with pytest.raises(BenchmarkDataError, match=r"1 image\(s\) named by the selected items are missing"):
        ThreeDSR(strict_counts=False).prepare(tmp_path / "data", **QUIET)
    (raw / "3dsrbench_v1-00000-of-00001.parquet").unlink()
    with pytest.raises(BenchmarkDataError, match=r"3dsrbench_v1-00000-of-00001\.parquet is missing.*ccvl/3DSRBench"):
        ThreeDSR(strict_counts=False).prepare(tmp_path / "data", **QUIET)


def test_3dsr_real_row(tmp_path: Path) -> None:
    """A real row of ccvl/3DSRBench's parquet (as `load_dataset` prints it): `index` is the string id, there is no
    `qid` column, C and D are null; two options, gold B, the COCO file name taken from `image_url`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"index": "VIN6MS3J",
           "question": "Consider the real-world 3D locations of the objects. Which object has a higher location?",
           "A": "baseball glove", "B": "red hat of the person in red in the back", "C": None, "D": None,
           "answer": "B", "category": "height_higher", "image_source": "MS-COCO",
           "image_url": "http://images.cocodataset.org/train2017/000000557944.jpg"}  # fmt: skip
    raw = tmp_path / "data" / "3dsrbench" / "download"
    raw.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row]), raw / "3dsrbench_v1-00000-of-00001.parquet")
    benchmark = ThreeDSR(strict_counts=False)
    records = benchmark.build_records(raw, tmp_path / "data", lambda _: None)
    assert list(records) == ["VIN6MS3J"]
    record = records["VIN6MS3J"]
    assert record["choices"] == ["baseball glove", "red hat of the person in red in the back"]
    assert record["answer"] == "B" and record["category"] == "height_higher"
    assert record["img_path"] == "3dsrbench/download/images/000000557944.jpg"
    (item,) = benchmark.items(records)
    assert item.candidates == ("A", "B")
    assert item.message == (f"{row['question']}\nA. baseball glove\nB. red hat of the person in red in the back\n"
                            f"{INSTRUCTION}")  # fmt: skip

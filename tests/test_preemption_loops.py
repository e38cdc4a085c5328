"""Preemption in the other two long loops, in-process: the feature-cache builder commits what it encoded and stops, the
evaluation harness saves the batch it is answering and stops; the same call afterwards finishes the job, with the same
result as an uninterrupted one. The signal is a real SIGTERM this process sends itself in the middle of an item /
batch (the handler only records it; the loop notices at its next safe point).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from eval_helpers import write_vsr_raw
from test_feature_cache import CPU, cache_contents, tiny_backbone, write_dataset

from prismatic.eval import runner
from prismatic.eval.benchmarks.vsr import VSR
from prismatic.eval.runner import RunOptions, run_items
from prismatic.preprocessing.feature_cache import BuildOptions, build_feature_cache, builder, image_groups
from prismatic.util.preemption import Preempted, Preemption

QUIET = {"log": lambda _: None}


def _sigterm_on_call(real, on_call: int):
    """`real`, but the `on_call`-th call sends this process SIGTERM before doing its work."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    return wrapped


def test_the_cache_builder_commits_what_it_encoded_and_the_rerun_finishes_it(tmp_path: Path, monkeypatch) -> None:
    data_root = write_dataset(tmp_path / "data")
    backbone, transform = tiny_backbone()
    items = image_groups(json.loads((data_root / "finetune.json").read_text()))
    options = BuildOptions(num_workers=0, chunk_size=100)  # one open chunk: only a commit on the stop keeps it
    build_feature_cache(items, data_root / "images", transform, backbone, tmp_path / "reference", CPU, options=options)

    cache, encode = tmp_path / "preempted", builder._encode_missing
    monkeypatch.setattr(builder, "_encode_missing", _sigterm_on_call(encode, 3))
    with Preemption(("SIGTERM",), exit_code=3) as preemption, pytest.raises(Preempted) as stop:
        build_feature_cache(items, data_root / "images", transform, backbone, cache, CPU, options=options,
                            preemption=preemption)  # fmt: skip
    assert stop.value.exit_code == 3 and "SIGTERM received: rank 0 stored" in str(stop.value)
    committed = cache_contents(cache)
    assert 0 < len(committed) < len(cache_contents(tmp_path / "reference"))  # the item in progress was finished

    monkeypatch.setattr(builder, "_encode_missing", encode)
    report = build_feature_cache(items, data_root / "images", transform, backbone, cache, CPU, options=options)
    assert report.already_cached > 0
    assert cache_contents(cache) == cache_contents(tmp_path / "reference")


def test_the_evaluation_saves_the_batch_in_progress_and_the_rerun_answers_the_rest(
    tiny_vlm, tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "data"
    write_vsr_raw(root, count=10)
    VSR(strict_counts=False).prepare(root, **QUIET)
    items = VSR().items(VSR().load_records(root))
    options = RunOptions(batch_size=3)
    reference = run_items(tiny_vlm, items, root, tmp_path / "once", CPU, options, 1, **QUIET)

    real = runner.answer_batch
    folder = tmp_path / "preempted"
    monkeypatch.setattr(runner, "answer_batch", _sigterm_on_call(real, 2))
    with Preemption(("SIGTERM",)) as preemption, pytest.raises(Preempted) as stop:
        run_items(tiny_vlm, items, root, folder, CPU, options, 1, preemption=preemption, **QUIET)
    assert stop.value.exit_code == 0 and "saved 2 of its 4 batches" in str(stop.value)
    assert len((folder / "predictions.rank0.jsonl").read_text().splitlines()) == 6  # batches 1 and 2, whole

    counted: list[int] = []
    monkeypatch.setattr(runner, "answer_batch", lambda *a, **k: counted.append(1) or real(*a, **k))
    assert run_items(tiny_vlm, items, root, folder, CPU, options, 1, **QUIET) == reference
    assert len(counted) == 2  # batches 3 and 4 only

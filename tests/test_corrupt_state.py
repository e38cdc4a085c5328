"""Corrupt state on disk: checkpoints and feature-cache chunks damaged after they were written, and a save that fails.

- A checkpoint file truncated or altered: resume finds it by its checksums, names the file, and continues from the
  newest intact checkpoint (bit-identical to an uninterrupted run); a named damaged checkpoint is refused; nothing
  fails with a low-level error.
- A save that fails half-way on a full disk (an OSError from a Python write, or a short write inside torch.save, which
  it reports as a RuntimeError): the partial directory is removed, the earlier checkpoint stays usable, and
  the run stops with CheckpointSaveError naming the cause and the free space.
- A feature-cache chunk truncated or altered: its entries are encoded live (the losses are those of a run without the
  cache), and `cache_features.py --verify` rebuilds it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import draccus
import pytest
import torch
from helpers import REPO, TINY_RUN_ID, TINY_RUN_PEAK_FLOPS, TINY_RUN_STEPS, losses, run_pretrain, small_run_args
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter

from prismatic.conf.pretrain import PretrainConfig
from prismatic.training.checkpointing import CheckpointManager, CheckpointSaveError
from prismatic.util.distributed import DistributedContext

CPU = DistributedContext(0, 1, 0, 1, torch.device("cpu"))


def _copy_run(tiny_run_dir: Path, root: Path) -> Path:
    """A private copy of the session's tiny run (checkpoints at steps 3 and 6) under `root/<run id>`."""
    run_dir = root / TINY_RUN_ID
    shutil.copytree(tiny_run_dir, run_dir)
    return run_dir


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_checkpoints_are_named_and_skipped(tiny_run_dir: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(tiny_run_dir, tmp_path)
    step3, step6 = (run_dir / "checkpoints" / name for name in ("step-000003", "step-000006"))
    manager = CheckpointManager(run_dir, CPU)
    assert manager.verify(step6) == [] and manager.resolve_resume("auto") == step6

    _truncate(step6 / "__0_0.distcp")  # a copy cut short
    (problem,) = manager.verify(step6)
    assert "__0_0.distcp" in problem and "truncated" in problem
    assert manager.resolve_resume("auto") == step3 and manager.resolve_resume(str(run_dir)) == step3
    with pytest.raises(ValueError, match=r"is damaged: .*__0_0\.distcp"):
        manager.resolve_resume(str(step6))

    _flip_byte(step3 / ".metadata")  # same size, altered content
    assert "SHA-256 mismatch" in manager.verify(step3)[0]
    with pytest.raises(ValueError, match=r"Every complete checkpoint .* is damaged"):
        manager.resolve_resume("auto")

    # Each kind of file is covered: RNG states, the trainer state, and the checksum lists themselves.
    for relative in ("rng/rank-00000.json", "trainer_state.json"):
        fresh = _copy_run(tiny_run_dir, tmp_path / relative.replace("/", "-"))
        checkpoint = fresh / "checkpoints" / "step-000006"
        _flip_byte(checkpoint / relative, offset=20)
        manager = CheckpointManager(fresh, CPU)
        assert manager.resolve_resume("auto") == fresh / "checkpoints" / "step-000003", relative
    fresh = _copy_run(tiny_run_dir, tmp_path / "unreadable")
    (fresh / "checkpoints" / "step-000006" / "checksums" / "rank-00000.json").write_text("{not json")
    assert "unreadable checksum list" in CheckpointManager(fresh, CPU).verify(fresh / "checkpoints" / "step-000006")[0]


def test_resume_after_damage_continues_from_the_intact_checkpoint_bit_identically(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    run_dir = _copy_run(tiny_run_dir, tmp_path)
    _truncate(run_dir / "checkpoints" / "step-000006" / "__0_0.distcp")
    (run_dir / "model.safetensors").unlink()
    args = small_run_args(tiny_data_root, tmp_path, TINY_RUN_ID, TINY_RUN_STEPS, "--peak_flops",
                          str(TINY_RUN_PEAK_FLOPS), "--resume", "auto")  # fmt: skip
    result = run_pretrain(args)
    assert "Skipping damaged checkpoint" in result.stderr and "__0_0.distcp" in result.stderr
    assert "Resumed from" in result.stderr and "step-000003" in result.stderr
    assert losses(run_dir) == losses(tiny_run_dir)  # steps 4-6 trained again, exactly as the first time
    assert CheckpointManager(run_dir, CPU).verify(run_dir / "checkpoints" / "step-000006") == []


def test_a_checkpoint_without_a_buffer_the_model_gained_since_resumes_bit_identically(
    tiny_data_root: Path, tmp_path: Path
) -> None:
    """A video model's checkpoint written before its empty-prompt embedding became a persistent buffer (no such key in
    the DCP metadata, no checksums: the layout of the time): the buffer keeps the value the model was built with."""
    args = small_run_args(tiny_data_root, tmp_path, "zoo", 6, model_type="dyva-cogvideox_siglip+tiny")
    run_pretrain(args)
    run_dir = tmp_path / "zoo"
    reference = losses(run_dir)
    checkpoint = run_dir / "checkpoints" / "step-000003"
    metadata_file = checkpoint / ".metadata"
    metadata = pickle.loads(metadata_file.read_bytes())
    prompt_key = "model.vision_backbone.generative.prompt_embeds"
    del metadata.state_dict_metadata[prompt_key]
    metadata_file.write_bytes(pickle.dumps(metadata))
    shutil.rmtree(checkpoint / "checksums")
    shutil.rmtree(run_dir / "checkpoints" / "step-000006")
    result = run_pretrain([*args, "--resume", str(checkpoint)])
    assert "predates the buffers ['vision_backbone.generative.prompt_embeds']" in result.stderr, result.stderr[-3000:]
    assert losses(run_dir) == reference


@pytest.fixture
def one_thread():
    """In-process runs compare with the subprocess reference, which runs with OMP_NUM_THREADS=1: the same thread count
    keeps the float reductions, hence the losses, bit-identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pretrain_in_process(args: list[str]) -> Path:
    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "scripts" / "pretrain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pretrain(draccus.parse(PretrainConfig, args=args))


def _writer_fails_on_second_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python-level write error: the writer writes part of its shard, then raises ENOSPC as an OSError."""
    write_data, calls = FileSystemWriter.write_data, {"n": 0}

    def disk_full_on_second_save(self, plan, planner):
        calls["n"] += 1
        future = write_data(self, plan, planner)
        if calls["n"] < 2:
            return future
        future.wait()
        for shard in Path(self.path).glob("*.distcp"):
            _truncate(shard)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSystemWriter, "write_data", disk_full_on_second_save)


class _NearlyFullDisk(io.RawIOBase):
    """A file on a disk with `space` bytes left, with write(2)'s semantics there: a write that does not fit is cut
    short (returns fewer bytes), the next one fails with ENOSPC."""

    def __init__(self, path: Path, space: int) -> None:
        self.file, self.space = path.open("wb", buffering=0), space

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def write(self, data) -> int:
        if self.space == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = self.file.write(bytes(memoryview(data)[: self.space]))
        self.space -= written
        return written

    def close(self) -> None:
        self.file.close()
        super().close()


def _shard_fills_the_disk_on_second_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second save's shard meets a disk with 1 KiB left. torch.save (inside DCP) sees the short write in its C++
    zip writer and reports `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...` with no
    errno: the form a CI run on a full disk printed (and a full tmpfs gives the same)."""
    create_stream, calls = FileSystem.create_stream, {"n": 0}

    @contextlib.contextmanager
    def nearly_full_disk_for_the_second_shard(self, path, mode):
        calls["n"] += str(path).endswith(".distcp")
        if calls["n"] < 2 or not str(path).endswith(".distcp"):
            with create_stream(self, path, mode) as stream:
                yield stream
            return
        with io.BufferedWriter(_NearlyFullDisk(Path(path), space=1024)) as stream:
            yield stream

    monkeypatch.setattr(FileSystem, "create_stream", nearly_full_disk_for_the_second_shard)


@pytest.mark.parametrize(
    ("fail", "cause"),
    [(_writer_fails_on_second_save, "No space left on device"),
     (_shard_fills_the_disk_on_second_save, "inline_container.*unexpected pos")],
    ids=["oserror", "short-write"],
)  # fmt: skip
def test_a_save_that_fails_half_way_keeps_the_previous_checkpoint_and_stops_the_run(
    fail: Callable[[pytest.MonkeyPatch], None],
    cause: str,
    tiny_data_root: Path,
    tiny_run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    one_thread: None,
) -> None:
    """The second save (step 6) fails on a full disk, in either form the writers report it."""
    fail(monkeypatch)
    args = small_run_args(tiny_data_root, tmp_path, "full-disk", TINY_RUN_STEPS)
    message = rf"step 6 .*{cause}.*GiB free on .*step-000003 \(step 3\) is intact.*--resume auto"
    with pytest.raises(CheckpointSaveError, match=message):
        _pretrain_in_process(args)
    run_dir = tmp_path / "full-disk"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000003"]  # partial files removed
    assert CheckpointManager(run_dir, CPU).verify(run_dir / "checkpoints" / "step-000003") == []

    monkeypatch.undo()
    _pretrain_in_process([*args, "--resume", "auto"])
    assert losses(run_dir) == losses(tiny_run_dir)


# === The feature cache ===
def _cache_chunks(cache_dir: Path, stream: str) -> list[Path]:
    return sorted(cache_dir.glob(f"{stream}-*/chunk-*.json"))


def test_a_damaged_cache_chunk_is_encoded_live_and_rebuilt_by_verify(tmp_path: Path) -> None:
    from test_feature_cache import build_cache, lookup_counts, train, write_dataset

    data_root = write_dataset(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    build_cache(data_root, cache_dir)  # chunks of 3 entries
    live, _ = train(data_root, tmp_path / "runs", "live")
    svd_chunks = _cache_chunks(cache_dir, "svd")
    truncated, altered = (index.parent / json.loads(index.read_text())["file"] for index in svd_chunks[:2])
    _truncate(truncated)
    _flip_byte(altered, offset=64 + 8)  # inside the first entry's values

    cached, log = train(data_root, tmp_path / "runs", "damaged", "--feature_cache_dir", str(cache_dir))
    assert cached == live  # damaged entries were encoded live: exactly the losses of a run without the cache
    assert f"Ignoring feature chunk {svd_chunks[0]}: {truncated} is" in log  # the short file, named
    assert f"{altered} does not match its checksum" in log
    assert any(stream == "svd" and misses > 0 for stream, _, misses in lookup_counts(log))

    result = build_cache(data_root, cache_dir, "--verify", "true")
    assert "2 damaged chunk(s) deleted" in result.stderr
    rebuilt, log = train(data_root, tmp_path / "runs", "rebuilt", "--feature_cache_dir", str(cache_dir))
    assert rebuilt == live and "does not match its checksum" not in log and "Ignoring feature chunk" not in log
    assert all(misses == 0 for _, _, misses in lookup_counts(log))

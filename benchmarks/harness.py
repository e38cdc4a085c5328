"""The shared benchmark harness: alternating timing, peak memory, machine description, JSON + markdown results.

Every benchmark compares candidates (ours and a peer, or ours and a floor) in ONE process, ALTERNATELY: after the
warm-up calls, each repetition runs every candidate once, in an order that reverses every repetition (A B, B A, ...),
so slow drifts of a shared machine (other jobs, thermal state) hit all candidates alike. Reported: medians (robust to
the odd slow call), every sample, and the ratio of medians.

Peak memory is measured in one extra, untimed call per candidate (so the sampler never perturbs the timings):
- CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the call;
- CPU: resident set size (RSS, from /proc/self/statm) sampled every millisecond by a thread, minus the RSS before the
  call (glibc's cached free memory is returned first with `malloc_trim`, so the baseline is not inflated). An RSS
  delta counts what the call newly touched: tensors, allocator growth and library workspaces alike.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
Candidate = Callable[[], Any]
Clock = Literal["wall", "cpu"]


# === Machine ===
def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux, else the platform module)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    import diffusers
    import timm
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
            "timm": timm.__version__, "python": platform.python_version()}  # fmt: skip


def machine_info(device: torch.device) -> dict[str, Any]:
    """What produced the numbers: CPU, cores, threads, accelerator, library versions, load average now."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "versions": library_versions(),
    }
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
    return info


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# === Timing ===
@dataclass
class Timings:
    """Seconds per call: wall clock, and this process's CPU time (user + system, all its threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def time_call(fn: Candidate, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call; CUDA work is waited for."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def time_alternately(
    candidates: dict[str, Candidate], device: torch.device, warmup: int, reps: int
) -> dict[str, Timings]:
    """Timings of each candidate: `warmup` untimed rounds, then `reps` timed rounds, the order reversed every round."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times = {name: Timings() for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            wall, cpu = time_call(candidates[name], device)
            times[name].wall.append(wall)
            times[name].cpu.append(cpu)
    return times


# === Memory ===
def _release_cached_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the baseline may include cached free memory
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime peak: a coarse fallback


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peak, self._stop_event = interval_s, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, _rss_bytes())


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated() minus the allocation before the call (one untimed call)"
    return "peak RSS (sampled every 1 ms, /proc/self/statm) minus the RSS before the call, after malloc_trim"


def peak_memory_mb(fn: Candidate, device: torch.device) -> float:
    """Extra memory at the peak of one call of `fn`, in MiB (see `memory_method`)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _release_cached_heap()
    before = _rss_bytes()
    sampler = _RssSampler()
    sampler.start()
    try:
        fn()
    finally:
        peak = sampler.stop()
    return max(peak - before, 0) / 2**20


# === Results ===
@dataclass
class Measurement:
    """One candidate's timings (seconds per call: wall clock, and process CPU time) and peak memory.

    Wall time is what the goals are judged on. CPU time is the cross-check on a shared machine: time spent waiting
    for a core taken by another job is not in it (with one torch thread it is the compute time of the call); it
    misses work done in other processes (data loader workers) or on a GPU, where it is not reported."""

    name: str
    description: str
    times_s: list[float]
    peak_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_times_s: list[float] | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def median_cpu_s(self) -> float | None:
        return statistics.median(self.cpu_times_s) if self.cpu_times_s else None

    def median(self, clock: Clock) -> float:
        value = self.median_s if clock == "wall" else self.median_cpu_s
        if value is None:
            raise ValueError(f"{self.name} has no {clock} timings")
        return value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median_s": self.median_s, "min_s": min(self.times_s), "max_s": max(self.times_s),
                "median_cpu_s": self.median_cpu_s}  # fmt: skip


@dataclass
class Comparison:
    """A ratio with its goal. `ratio` is defined by `definition` (e.g. ours/peer time); `goal` is '<= x' or '>= x',
    or None for a row reported for information (e.g. the peer's own scaling, as a reference)."""

    name: str
    definition: str
    ratio: float
    goal: str | None
    note: str = ""
    cpu_ratio: float | None = None  # the same ratio from CPU-time medians (None where CPU time does not apply)

    @property
    def goal_met(self) -> bool | None:
        if self.goal is None:
            return None
        op, threshold = self.goal.split()
        return self.ratio <= float(threshold) if op == "<=" else self.ratio >= float(threshold)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "goal_met": self.goal_met}


def measure(
    candidates: dict[str, tuple[str, Candidate]], device: torch.device, warmup: int, reps: int, memory: bool = True
) -> dict[str, Measurement]:
    """Time `candidates` ({name: (description, fn)}) alternately, then one untimed memory call each."""
    times = time_alternately({name: fn for name, (_, fn) in candidates.items()}, device, warmup, reps)
    results = {}
    for name, (description, fn) in candidates.items():
        peak = peak_memory_mb(fn, device) if memory else None
        cpu = times[name].cpu if device.type == "cpu" else None
        results[name] = Measurement(name, description, times[name].wall, peak, cpu_times_s=cpu)
    return results


def ratio_pair(compute: Callable[[Clock], float], measured: dict[str, Measurement]) -> tuple[float, float | None]:
    """`compute(clock)` on wall-clock medians, and on CPU-time medians when every measurement has them."""
    has_cpu = all(m.cpu_times_s for m in measured.values())
    return compute("wall"), (compute("cpu") if has_cpu else None)


def write_results(
    name: str,
    title: str,
    out_dir: Path,
    device: torch.device,
    settings: dict[str, Any],
    dimensions: dict[str, Any],
    measurements: Sequence[Measurement],
    comparisons: Sequence[Comparison],
    notes: Sequence[str] = (),
    skipped: str | None = None,
) -> Path:
    """Write `<name>.json` and `<name>.md` into `out_dir`; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "title": title,
        "skipped": skipped,
        "machine": machine_info(device),
        "settings": settings,
        "memory_method": memory_method(device),
        "dimensions": dimensions,
        "measurements": [m.to_dict() for m in measurements],
        "comparisons": [c.to_dict() for c in comparisons],
        "notes": list(notes),
    }
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(render_markdown(payload))
    return path


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def comparisons_table(payload: dict[str, Any]) -> list[str]:
    lines = ["| comparison | ratio | definition | goal | met | ratio from CPU time | note |", "|---" * 7 + "|"]
    for c in payload["comparisons"]:
        met = {True: "yes", False: "**no**", None: "(info)"}[c["goal_met"]]
        goal, cpu = c["goal"] or "-", "-" if c.get("cpu_ratio") is None else _fmt(c["cpu_ratio"])
        lines.append(f"| {c['name']} | {_fmt(c['ratio'])} | {c['definition']} | {goal} | {met} | {cpu} | {c['note']} |")
    return lines


def _extras(extra: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in extra.items())


def render_markdown(payload: dict[str, Any]) -> str:
    """One benchmark's result as markdown: comparisons, measurements, dimensions, machine, notes."""
    machine = payload["machine"]
    lines = [f"# {payload['title']}", ""]
    if payload.get("skipped"):
        return "\n".join([*lines, f"**Skipped:** {payload['skipped']}", ""])
    lines += [*comparisons_table(payload), ""]
    header = "| candidate | median s | min s | max s | median CPU s | peak memory MiB | derived | what |"
    lines += [header, "|---" * 8 + "|"]
    for m in payload["measurements"]:
        peak = "-" if m["peak_memory_mb"] is None else f"{m['peak_memory_mb']:.0f}"
        cpu = "-" if m.get("median_cpu_s") is None else _fmt(m["median_cpu_s"])
        lines.append(f"| {m['name']} | {_fmt(m['median_s'])} | {_fmt(m['min_s'])} | {_fmt(m['max_s'])} | {cpu} | "
                     f"{peak} | {_extras(m['extra'])} | {m['description']} |")  # fmt: skip
    lines += ["", f"Peak memory: {payload['memory_method']}.", ""]
    lines += ["Dimensions: " + ", ".join(f"{k}={v}" for k, v in payload["dimensions"].items()), ""]
    lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in payload["settings"].items()), ""]
    lines += [f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, "
              f"device {machine.get('accelerator', machine['device'])}, load average {machine['load_average_1_5_15']}, "
              + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()), ""]  # fmt: skip
    lines += [f"- {note}" for note in payload["notes"]]
    return "\n".join(lines) + "\n"


def render_combined(out_dir: Path, names: Sequence[str]) -> Path:
    """`results.md`: the machine once, then every benchmark's comparison table (from the JSON files in `out_dir`)."""
    payloads = [json.loads((out_dir / f"{n}.json").read_text()) for n in names if (out_dir / f"{n}.json").is_file()]
    lines = ["# Benchmark results", ""]
    if payloads:
        machine = payloads[0]["machine"]
        lines += [f"Machine: {machine['cpu']}, {machine['cpu_cores']} cores, {machine['torch_threads']} torch threads, "
                  f"device {machine.get('accelerator', machine['device'])}; "
                  + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".", ""]  # fmt: skip
    for payload in payloads:
        load = payload["machine"]["load_average_1_5_15"]
        lines += [f"## {payload['title']} (`{payload['benchmark']}`, load average {load})", ""]
        if payload.get("skipped"):
            lines += [f"Skipped: {payload['skipped']}", ""]
            continue
        name = payload["benchmark"]
        lines += [*comparisons_table(payload), "", f"Details: [{name}.md]({name}.md)", ""]
    path = out_dir / "results.md"
    path.write_text("\n".join(lines))
    return path


# === Command line ===
def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny dimensions, 1 warm-up + 2 reps: seconds, for tests")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON and markdown go")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 5; smoke 2)")
    parser.add_argument("--device", type=str, default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser


@dataclass(frozen=True)
class RunSettings:
    smoke: bool
    out: Path
    warmup: int
    reps: int
    device: torch.device
    load_at_start: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))

    def to_dict(self) -> dict[str, Any]:
        return {"smoke": self.smoke, "warmup": self.warmup, "reps": self.reps, "device": str(self.device),
                "threads": torch.get_num_threads(), "load_average_1min_at_start": self.load_at_start}  # fmt: skip


def parse_settings(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[RunSettings, argparse.Namespace]:
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    warmup = args.warmup if args.warmup is not None else 1
    reps = args.reps if args.reps is not None else (2 if args.smoke else 5)
    return RunSettings(args.smoke, args.out, warmup, reps, device), args

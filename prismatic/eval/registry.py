"""The benchmark families the harness knows: one line per family (its file lives in `prismatic/eval/benchmarks/`)."""

from __future__ import annotations

from prismatic.eval.benchmark import Benchmark
from prismatic.eval.benchmarks.demo_world import DemoWorld, DemoWorldVal
from prismatic.eval.benchmarks.gqa import GQA
from prismatic.eval.benchmarks.mindcube import MindCube, MindCubeAll
from prismatic.eval.benchmarks.mmsi import MMSI
from prismatic.eval.benchmarks.pope import POPE
from prismatic.eval.benchmarks.sat import SAT
from prismatic.eval.benchmarks.seed_bench import SEEDBench
from prismatic.eval.benchmarks.spatial_mm import SpatialMM
from prismatic.eval.benchmarks.tallyqa import TallyQA
from prismatic.eval.benchmarks.threedsr import ThreeDSR
from prismatic.eval.benchmarks.vizwiz import VizWiz
from prismatic.eval.benchmarks.vqav2 import VQAv2
from prismatic.eval.benchmarks.vsr import VSR

BENCHMARKS: dict[str, type[Benchmark]] = {
    VSR.name: VSR,
    TallyQA.name: TallyQA,
    SpatialMM.name: SpatialMM,
    VQAv2.name: VQAv2,
    GQA.name: GQA,
    VizWiz.name: VizWiz,
    POPE.name: POPE,
    SEEDBench.name: SEEDBench,
    ThreeDSR.name: ThreeDSR,
    MMSI.name: MMSI,
    SAT.name: SAT,
    MindCube.name: MindCube,
    MindCubeAll.name: MindCubeAll,
    DemoWorld.name: DemoWorld,
    DemoWorldVal.name: DemoWorldVal,
}


# What `--benchmarks all` means: the benchmarks the paper reports (not the full MindCube set, not the demo world).
PAPER_BENCHMARKS: tuple[str, ...] = tuple(
    n for n in BENCHMARKS if n not in (MindCubeAll.name, DemoWorld.name, DemoWorldVal.name)
)


def get_benchmark(name: str, strict_counts: bool = True) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name](strict_counts=strict_counts)


def parse_benchmarks(names: str) -> list[str]:
    """A comma-separated list ("vsr,tallyqa") checked against the registry; "all" = the paper's benchmarks."""
    wanted = list(PAPER_BENCHMARKS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BENCHMARKS]
    if unknown or not wanted:
        raise ValueError(f"Unknown benchmark(s) {unknown or names!r}; available: {', '.join(BENCHMARKS)} (or all).")
    return wanted

"""The numbers the DyVA paper (arXiv 2510.00855) reports for the released models, to print beside ours.

Keyed by released model id, then by benchmark name, then by the benchmark's column header (its `columns`). Copied as
printed (Tables 1, 2 and 3; DyVA-Qwen2.5-7B appears in Tables 1 and 2 only). The paper mixes rounding and truncation at
2 decimals, so compare at +-0.01 and look at raw counts (docs/evaluation.md).
"""

from __future__ import annotations

PAPER_NUMBERS: dict[str, dict[str, dict[str, float]]] = {
    "dyva_siglip+7b": {
        "vsr": {"Topo.": 68.90, "Prox.": 68.75, "Proj.": 66.74, "Direc.": 66.67, "Adj.": 66.38, "Orien.": 61.22,
                "Unall.": 57.50, "Avg.": 67.10},
        "tallyqa": {"Avg.": 59.47},
        "spatial-mm-obj": {"1-obj": 54.78, "2-obj": 46.29, "Avg.": 49.03},
        "3dsrbench": {"H.": 53.71, "L.": 57.60, "O.": 27.23, "M.": 40.80, "Avg.": 45.41},
        "vqa-v2": {"VQAv2": 75.36},
        "gqa": {"GQA": 61.52},
        "vizwiz": {"VizWiz": 55.95},
        "pope": {"POPE": 85.97},
        "seed-bench": {"SeedBench": 66.61},
        "sat": {"Obj Move.": 49.15, "Act. Seq.": 57.81, "Act. Cons.": 49.25, "Goal Aim": 53.38, "Persp.": 40.44,
                "Avg.": 49.51},
        "mindcube": {"Rot.": 37.70, "Among": 43.10, "Around": 49.00, "Avg.": 44.62},
        "mmsi": {"Cam–Cam": 21.5, "Obj–Obj": 30.9, "Reg–Reg": 25.9, "Cam–Obj": 31.4, "Obj–Reg": 27.1, "Cam–Reg": 20.5,
                 "Attr. Meas.": 35.9, "Attr. Appr.": 24.2, "Motion Cam": 13.5, "Motion Obj": 19.7, "MSR": 24.2,
                 "Avg.": 24.90},
    },
    "dyva_siglip_qwen+7b": {
        "vsr": {"Topo.": 66.67, "Prox.": 71.88, "Proj.": 68.74, "Direc.": 61.90, "Adj.": 62.93, "Orien.": 40.82,
                "Unall.": 55.00, "Avg.": 65.63},
        "tallyqa": {"Avg.": 68.11},
        "spatial-mm-obj": {"1-obj": 62.74, "2-obj": 47.53, "Avg.": 52.44},
        "3dsrbench": {"H.": 52.57, "L.": 54.51, "O.": 27.23, "M.": 49.60, "Avg.": 47.16},
        "sat": {"Obj Move.": 78.83, "Act. Seq.": 62.13, "Act. Cons.": 49.85, "Goal Aim": 51.86, "Persp.": 41.72,
                "Avg.": 55.24},
        "mindcube": {"Rot.": 37.20, "Among": 39.10, "Around": 51.70, "Avg.": 49.80},
        "mmsi": {"Cam–Cam": 15.1, "Obj–Obj": 33.0, "Reg–Reg": 25.9, "Cam–Obj": 33.7, "Obj–Reg": 35.3, "Cam–Reg": 30.1,
                 "Attr. Meas.": 32.8, "Attr. Appr.": 25.8, "Motion Cam": 17.6, "Motion Obj": 27.6, "MSR": 29.3,
                 "Avg.": 28.00},
    },
}  # fmt: skip
# The released ids' aliases (prismatic.loader.RELEASED_ALIASES) point at the same numbers.
PAPER_ALIASES = {"dyva_siglip": "dyva_siglip+7b"}


def paper_numbers(model_id: str, benchmark: str) -> dict[str, float]:
    """The paper's cells for a released model on a benchmark ({} when it reports none)."""
    return PAPER_NUMBERS.get(PAPER_ALIASES.get(model_id, model_id), {}).get(benchmark, {})

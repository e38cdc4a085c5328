"""The evaluation harness: the paper's benchmarks under the protocol its numbers were produced with.

    benchmark.py     what a benchmark family is (prepare / items / score), shared helpers
    benchmarks/      one file per family (VSR, TallyQA, POPE, GQA, VQAv2, VizWiz, SEED-Bench, SpatialMM-Obj,
                     3DSRBench, MMSI-Bench, SAT, MindCube, the demo world); registry.py lists them
    slim.py          vlm-evaluation's seeded slim subsets; prompts.py the protocol's prompts; metrics.py AUROC / AUPR
    predict.py       the model side: closed-form first-token probabilities in one batched pass, greedy generation
    runner.py        batched, data-parallel, resumable answering; harness.py one benchmark end to end (and --rescore)
    results.py       fingerprints, results.json, the paper-style tables; paper.py the paper's numbers
Entry points: scripts/prepare_benchmarks.py, scripts/evaluate.py; docs/evaluation.md.
"""

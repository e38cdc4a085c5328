# Set-up-and-run commands for a newcomer on a fresh machine; each creates and fills its own virtualenv.
#   make demo   -> the main job: a tiny world model pretrained on unlabelled clips of a falling world, then three tiny
#                  VLMs (DyVA with it, DyVA with a random SVD, SigLIP only) on the same small labelled set, scored on
#                  held-out questions about the future (~20 min on 2 cores after set-up; results in runs/demo/);
#                  DEMO_FLAGS="--study" for the hour-long study over seeds and labelled-set sizes (docs/demo.md)
#   make test   -> lint + the whole test suite on CPU in two pytest-xdist workers (~11 min on 2 Xeon cores after
#                  set-up, 11.9 min from a fresh clone, 18-20 min on a slower 2-core EPYC; temporary files peak at
#                  2.8 GB under /tmp)
#   make bench  -> the benchmark suite against HF/released peers (~19 min on 2 CPU cores; results and goals in
#                  benchmarks/results/, see benchmarks/README.md); BENCH_FLAGS="--smoke" for a seconds-long check
#   make test-lmms -> the lmms-eval integration test in its own virtualenv .venv-lmms (docs/evaluation.md)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-lmms lint venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned to the builds pip resolves here (CUDA wheels that also run on CPU)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev,eval,video,lora]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 $(PY) -m pytest -q -x -n 2 --dist loadfile --durations=15 tests

# lmms-eval 0.7.3 downgrades wandb / protobuf / filelock, so its integration test gets a virtualenv of its own.
LMMS_VENV := .venv-lmms
LMMS_STAMP := $(LMMS_VENV)/.installed

$(LMMS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LMMS_VENV)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(LMMS_VENV)/bin/python -m pip install -q -e ".[dev,lmms]"
	touch $(LMMS_STAMP)

test-lmms: $(LMMS_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(LMMS_VENV)/bin/python -m pytest -q -x tests/test_lmms_eval.py

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(PY) scripts/demo.py $(DEMO_FLAGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m benchmarks.run_all $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) $(LMMS_VENV) .pytest_cache

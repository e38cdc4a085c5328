#!/usr/bin/env bash
# The GPU run of benchmarks/gpu_shapes.py: one command for a lent GPU machine without network, run from the repository
# root with the wheels of the packages its image lacks in .whl/ (diffusers; draccus, mergedeep, toml, typing-inspect,
# mypy-extensions; timm in .whl/fallback/, used only if the image's is too old; liger-kernel optionally, for the fused
# loss lever; carried along, not in git) and $OUT the directory whose files come back:
#
#   bash benchmarks/gpu_run.sh          # issue 16's parts in one 10-minute command (hard limits: 555 s in all)
#   bash benchmarks/gpu_run.sh --smoke  # the CPU rehearsal of every part at tiny sizes (about 2 min on 2 cores);
#                                       # extra arguments go to every part; OUT defaults to a scratch directory then
#   GPU_PARTS="svd train" bash benchmarks/gpu_run.sh   # the earlier parts (the "before" numbers of issue 15)
#   OUT=$OUT/no_ac GPU_PARTS=train bash benchmarks/gpu_run.sh --no-activation-checkpointing --train-batches 8 16
#
# .whl/ is made on a machine with PyPI (pure-Python wheels; check each one's Requires-Dist against the GPU image):
#   for p in diffusers==0.42.1 draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2 typing-inspect==0.9.0 \
#            mypy-extensions==1.2.0 liger-kernel; do python3 -m pip download --no-deps --only-binary=:all: \
#            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl "$p"; done
#            # (timm==1.0.31: -d .whl/fallback)
#
# The parts run as separate processes (an error, a hang or a broken CUDA context in one cannot cost the other), each
# under a time budget it plans with (candidates that would not fit are skipped and noted) and a hard `timeout`;
# results are saved after every candidate and merged into $OUT/gpu_shapes.{json,md}; the whole log is $OUT/run.log.
# Budgets (measuring / hard limit, seconds): levers 150/175, dyva7b 130/150, encoder 80/105, generate 45/65, eval7b
# 40/60; the levers part measures each lever and recipe on its own model (build ~5-10 s each at 1.5B), so its budget
# is the largest; the encoder's compiled variants compile CLIP, the VAE encoder and the U-Net stages on their first
# call; the parts run in the order of what the issue needs most, so a machine lost late costs the least. The H200 run
# of 2026-12-04 (before the recipes and encoder variants) took 453 s in all.
set -uo pipefail
SMOKE=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && SMOKE=1; done
if [ "$SMOKE" = 1 ]; then
  OUT="${OUT:-/tmp/gpu_run_smoke}"  # never over the real results in benchmarks/results
else
  OUT="${OUT:-benchmarks/results}"
fi
mkdir -p "$OUT" /tmp/site
# The interpreter: the image's python3 on the GPU machine; a checkout's .venv where python3 has no torch (CPU rehearsal).
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
if [ "$SMOKE" = 0 ]; then
  # The project is not installed there: `python3 -m benchmarks.gpu_shapes` finds prismatic/ and benchmarks/ in the cwd.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || for wheel in .whl/*.whl; do "$PY" -m zipfile -e "$wheel" /tmp/site; done  # all pure-Python: unzipping works
  export PYTHONPATH="/tmp/site:$PWD"
  # The image's own timm unless it lacks what the SigLIP backbone uses; then the tested one from .whl/fallback/.
  "$PY" -c "import timm.models as m; assert m.get_pretrained_cfg('vit_so400m_patch14_siglip_224.webli') is not None
from timm.models.vision_transformer import VisionTransformer as V; assert hasattr(V, 'prune_intermediate_layers')" \
    || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
       .whl/fallback/*.whl || for wheel in .whl/fallback/*.whl; do "$PY" -m zipfile -e "$wheel" /tmp/site; done
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Each part's measuring budget and hard limit (seconds); the CPU rehearsal gets generous limits, it plans with none.
budget() {
  case "$1" in
    svd) echo "90 130" ;; train) echo "160 220" ;; levers) echo "150 175" ;; dyva7b) echo "130 150" ;;
    encoder) echo "80 105" ;; generate) echo "45 65" ;; eval7b) echo "40 60" ;; *) echo "unknown" ;;
  esac
}
{
  nvidia-smi 2>/dev/null || echo "nvidia-smi: not available (no NVIDIA GPU on this machine)"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__,
timm.__file__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  "$PY" -c "import liger_kernel; print('liger-kernel', liger_kernel.__file__)" 2>/dev/null \
    || echo "liger-kernel: not installed (the loss_liger lever is skipped)"
  status=0
  for part in ${GPU_PARTS:-levers dyva7b encoder generate eval7b}; do  # GPU_PARTS=levers: that part alone
    read -r budget_s limit <<<"$(budget "$part")"
    if [ "$budget_s" = unknown ]; then echo "unknown part $part"; status=1; continue; fi
    if [ "$SMOKE" = 1 ]; then limit=300; fi
    echo "=== part $part: budget ${budget_s} s, limit ${limit} s"
    timeout -k 10 "$limit" "$PY" -m benchmarks.gpu_shapes --only "$part" --out "$OUT" --budget-s "$budget_s" "$@" \
      || { echo "gpu_shapes --only $part exited with $?"; status=1; }
  done
  echo "=== $OUT/gpu_shapes.md"
  cat "$OUT/gpu_shapes.md"
  exit "$status"
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# The GPU run of benchmarks/gpu_shapes.py: one command for a lent GPU machine without network, run from the repository
# root with the wheels of the packages its image lacks in .whl/ (diffusers; draccus, mergedeep, toml, typing-inspect,
# mypy-extensions; timm in .whl/fallback/, used only if the image's is too old; carried along, not in git) and $OUT
# the directory whose files come back:
#
#   bash benchmarks/gpu_run.sh          # ~3 min on an H200; hard limits 130 s + 220 s, plus the install
#   bash benchmarks/gpu_run.sh --smoke  # extra arguments go to both parts (this one: the CPU rehearsal, seconds)
#   OUT=$OUT/no_ac GPU_PARTS=train bash benchmarks/gpu_run.sh --no-activation-checkpointing --train-batches 8 16
#
# .whl/ is made on a machine with PyPI (pure-Python wheels; check each one's Requires-Dist against the GPU image):
#   for p in diffusers==0.42.1 draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2 typing-inspect==0.9.0 \
#            mypy-extensions==1.2.0; do python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --implementation cp --platform manylinux_2_28_x86_64 -d .whl "$p"; done    # (timm==1.0.31: -d .whl/fallback)
#
# The two parts run as separate processes (an error, a hang or a broken CUDA context in one cannot cost the other),
# each under a time budget it plans with (candidates that would not fit are skipped and noted) and a hard `timeout`;
# results are saved after every candidate and merged into $OUT/gpu_shapes.{json,md}; the whole log is $OUT/run.log.
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT" /tmp/site
# The project is not installed there: `python3 -m benchmarks.gpu_shapes` finds prismatic/ and benchmarks/ in the cwd.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || for wheel in .whl/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done  # all pure-Python: unzipping works
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The image's own timm unless it lacks what the SigLIP backbone uses; then the tested one from .whl/fallback/.
python3 -c "import timm.models as m; assert m.get_pretrained_cfg('vit_so400m_patch14_siglip_224.webli') is not None
from timm.models.vision_transformer import VisionTransformer as V; assert hasattr(V, 'prune_intermediate_layers')" \
  || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
     .whl/fallback/*.whl || for wheel in .whl/fallback/*.whl; do python3 -m zipfile -e "$wheel" /tmp/site; done
{
  nvidia-smi
  python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__,
timm.__file__, torch.cuda.get_device_name(0))"
  status=0
  for part in ${GPU_PARTS:-svd train}; do  # GPU_PARTS=train: that part alone
    if [ "$part" = svd ]; then limit=130 budget=90; else limit=220 budget=160; fi
    timeout -k 10 "$limit" python3 -m benchmarks.gpu_shapes --only "$part" --out "$OUT" --budget-s "$budget" "$@" \
      || { echo "gpu_shapes --only $part exited with $?"; status=1; }
  done
  echo "=== $OUT/gpu_shapes.md"
  cat "$OUT/gpu_shapes.md"
  exit "$status"
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"

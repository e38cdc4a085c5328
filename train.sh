#!/usr/bin/env bash
# train.sh: the paper's DyVA-7B training command (the README's), with every knob overridable from the environment.
#
#   bash train.sh                                  # DyVA-7B on 1 node x 8 GPUs, as the authors ran it
#   LLM=qwen25-7b-chat MODEL_TYPE=dyva_siglip_qwen+7b MODEL_ID=dyva_siglip_qwen+7b RUN_ID=dyva-qwen bash train.sh
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash train.sh   # then NODE_RANK=1 on host1 (multi-node rendezvous)
#   srun --nodes 2 --ntasks-per-node 1 bash -c 'NNODES=$SLURM_NNODES NODE_RANK=$SLURM_NODEID \
#        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1) bash train.sh'   # Slurm, 2 nodes
#   DRY_RUN=1 bash train.sh                        # print the command instead of running it
#   bash train.sh --save_interval 200              # extra arguments are passed to scripts/pretrain.py
#
# Variables (default):
#   NNODES (1)            number of nodes                NPROC (8)          processes (GPUs) per node
#   NODE_RANK (0)         this node's rank               MASTER_ADDR (localhost), MASTER_PORT (29500): rendezvous
#   MODEL_TYPE (dyva_siglip)   --model.type              MODEL_ID (dyva_siglip)        --model.model_id
#   ARCH (no-align+dual)       --model.arch_specifier    LLM (llama2-7b-pure)          --model.llm_backbone_id
#   LLM_MAX_LENGTH (2048)      --model.llm_max_length    RESIZE (resize-naive)         --model.image_resize_strategy
#   MIXED_PRECISION (True)     --model.enable_mixed_precision_training
#   PER_DEVICE_BATCH (1)       --model.finetune_per_device_batch_size (global batch 128: accumulation fills it)
#   NUM_FRAMES (8)             --num_frames              LR (1e-5, the released scripts; the paper says 2e-5)
#   HF_TOKEN_NAME (HF_TOKEN)   --hf_token: the NAME of the env var (or a file path) holding the token
#   RUN_ID (example)  RUN_ROOT (runs)  DATASET (llava_svd)  DATA_ROOT (data)  STAGE (finetune)
#   WANDB_PROJECT (P)  WANDB_ENTITY (E): wandb is used when WANDB_PROJECT is non-empty (WANDB_MODE=offline works)
set -euo pipefail

NNODES="${NNODES:-1}"
NPROC="${NPROC:-8}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-localhost}"
MASTER_PORT="${MASTER_PORT:-29500}"
MODEL_TYPE="${MODEL_TYPE:-dyva_siglip}"
MODEL_ID="${MODEL_ID:-dyva_siglip}"
ARCH="${ARCH:-no-align+dual}"
LLM="${LLM:-llama2-7b-pure}"
LLM_MAX_LENGTH="${LLM_MAX_LENGTH:-2048}"
RESIZE="${RESIZE:-resize-naive}"
MIXED_PRECISION="${MIXED_PRECISION:-True}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-1}"
NUM_FRAMES="${NUM_FRAMES:-8}"
LR="${LR:-1e-5}"
HF_TOKEN_NAME="${HF_TOKEN_NAME:-HF_TOKEN}"
RUN_ID="${RUN_ID:-example}"
RUN_ROOT="${RUN_ROOT:-runs}"
DATASET="${DATASET:-llava_svd}"
DATA_ROOT="${DATA_ROOT:-data}"
STAGE="${STAGE:-finetune}"
WANDB_PROJECT="${WANDB_PROJECT-P}"
WANDB_ENTITY="${WANDB_ENTITY-E}"

cd "$(dirname "$0")"
TORCHRUN="${TORCHRUN:-torchrun}"

command=(
  "$TORCHRUN" --nnodes "$NNODES" --nproc-per-node "$NPROC" --node-rank "$NODE_RANK"
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
  scripts/pretrain.py
  --model.type "$MODEL_TYPE"
  --model.model_id "$MODEL_ID"
  --model.arch_specifier "$ARCH"
  --model.llm_backbone_id "$LLM"
  --model.llm_max_length "$LLM_MAX_LENGTH"
  --model.image_resize_strategy "$RESIZE"
  --model.enable_mixed_precision_training "$MIXED_PRECISION"
  --model.finetune_per_device_batch_size "$PER_DEVICE_BATCH"
  --num_frames "$NUM_FRAMES"
  --model.finetune_learning_rate "$LR"
  --hf_token "$HF_TOKEN_NAME"
  --run_id "$RUN_ID"
  --run_root_dir "$RUN_ROOT"
  --dataset.type "$DATASET"
  --dataset.dataset_root_dir "$DATA_ROOT"
  --stage "$STAGE"
)
if [[ -n "$WANDB_PROJECT" ]]; then
  command+=(--wandb_project "$WANDB_PROJECT")
  if [[ -n "$WANDB_ENTITY" ]]; then
    command+=(--wandb_entity "$WANDB_ENTITY")
  fi
fi
command+=("$@")

if [[ "${DRY_RUN:-0}" != "0" ]]; then
  printf '%q ' "${command[@]}"
  printf '\n'
  exit 0
fi
exec "${command[@]}"

#!/usr/bin/env bash
# GPU check of the small LM (about 8 minutes on one GPU): a short gpu_small SFT + RL run (bf16 autocast), the same
# RL run with torch.compile, the trainer's throughput, and the parity of the losses and the model on CUDA vs CPU.
#
#   scripts/gpu_check.sh                       # on a CUDA machine (writes runs/gpu_check/, log in runs/gpu_check/log.txt)
#   scripts/gpu_check.sh --device cpu --quick  # the same path on CPU in about a minute (what the tests run)
#
# Options: --device DEV (default cuda), --quick (tiny step counts), --no-compile, --out DIR, --python PY.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda; QUICK=0; COMPILE=1; OUT=runs/gpu_check; PY=.venv/bin/python
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --no-compile) COMPILE=0; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$PY" ] || PY=python3
# --quick: the same commands with tiny batches (a functional check of the path, not of the numbers)
if [ "$QUICK" = 1 ]; then SFT_STEPS=20; RL_STEPS=5; COMPILE_STEPS=4; EVAL=8; SFT_B="--batch_size 32 --num_threads 1"
  RL_B="--prompts_per_step 4 --num_threads 1"
else SFT_STEPS=1500; RL_STEPS=60; COMPILE_STEPS=20; EVAL=200; SFT_B=""; RL_B=""; fi
# torch.compile needs a C++ toolchain on CPU; the CPU dry path skips it unless asked for explicitly
if [ "$DEVICE" = cpu ] && [ "$QUICK" = 1 ] && [ "${RLKL_GPU_CHECK_COMPILE:-0}" != 1 ]; then COMPILE=0; fi
rm -rf "$OUT"; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
t0=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - t0 )) s)"; }

step "device"
"$PY" -c "import torch, rlkl; print('torch', torch.__version__, 'rlkl', rlkl.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

step "parity of the losses and the GPT on $DEVICE vs cpu"
"$PY" scripts/gpu_check.py parity --device "$DEVICE"

step "gpu_small SFT, $SFT_STEPS steps"
"$PY" -m rlkl sft --task addition --preset gpu_small --steps "$SFT_STEPS" --eval_every "$SFT_STEPS" \
  --eval_prompts "$EVAL" --device "$DEVICE" --out "$OUT/sft" --quiet $SFT_B

step "gpu_small RL (grpo), $RL_STEPS steps"
"$PY" -m rlkl train --preset gpu_small --task addition --method grpo --steps "$RL_STEPS" --eval_every "$RL_STEPS" \
  --eval_prompts "$EVAL" --ref "$OUT/sft/reference.pt" --device "$DEVICE" --out "$OUT/rl" --quiet $RL_B
"$PY" scripts/gpu_check.py throughput "$OUT/rl"

if [ "$COMPILE" = 1 ]; then
  step "gpu_small RL (frpo) with torch.compile, $COMPILE_STEPS steps"
  "$PY" -m rlkl train --preset gpu_small --task addition --method frpo --steps "$COMPILE_STEPS" \
    --eval_every "$COMPILE_STEPS" --eval_prompts "$EVAL" --ref "$OUT/sft/reference.pt" --device "$DEVICE" \
    --compile true --out "$OUT/rl_compile" --quiet $RL_B
  "$PY" scripts/gpu_check.py throughput "$OUT/rl_compile"
fi
step "done: gpu_check passed on $DEVICE; log in $OUT/log.txt"

#!/usr/bin/env bash
# Issue 13 on one GPU: the larger encoder's fine-tuned rows that take an hour each on a 2-core CPU.
#
#   bash bench/gpu_accuracy.sh MODEL DATA_DIR OUT_DIR
#
# MODEL: all-mpnet-base-v2 (a folder; bench/get_mpnet.sh). DATA_DIR: the team's data layout,
# ag_news/{train,test}.csv (and r8/ when R8=1). Runs bench/fusion_accuracy.py side by side on the
# one GPU (fine-tuning at batch 32 leaves most of an H100/H200 idle, so parallel runs cost little
# each): AG News 4k fine-tuned once per seed in SEEDS, AG News 4k self-trained + fine-tuned once per
# seed in SELF_SEEDS (its own protocol: the other AG News train texts without labels), and R8
# fine-tuned when R8=1. Every AG News run shares the train/validation split of SPLIT_SEED, so
# bench/ensemble_accuracy.py can calibrate their averages on the same validation rows; it scores
# three ensembles: the fine-tuned seeds, the self-trained seeds, and all of them. Each run has
# LIMIT seconds (480); one that runs out is reported missing, the others stand.
# Defaults: SEEDS "0 1 2", SELF_SEEDS "0", SPLIT_SEED 0, R8 1; EPOCHS (6) and LR (5e-5) for
# AG News, R8_EPOCHS (3), SELF_EPOCHS (4); DEVICE (cuda); OMP_NUM_THREADS (3) per run.
set -uo pipefail
if [ $# -ne 3 ]; then echo "usage: bash bench/gpu_accuracy.sh MODEL DATA_DIR OUT_DIR" >&2; exit 2; fi
model=$1; data=$2; out=$3
seeds=${SEEDS-0 1 2}; self_seeds=${SELF_SEEDS-0}; split_seed=${SPLIT_SEED:-0}; with_r8=${R8:-1}
needed="ag_news/train.csv ag_news/test.csv"; [ "$with_r8" = 1 ] && needed="$needed r8/train.csv r8/test.csv"
for f in $needed; do
  [ -f "$data/$f" ] || { echo "gpu_accuracy.sh: $data/$f is missing" >&2; exit 2; }
done
[ -f "$model/config.json" ] || { echo "gpu_accuracy.sh: $model is not a model folder (no config.json)" >&2; exit 2; }
mkdir -p "$out/probabilities"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
limit=${LIMIT:-480}; epochs=${EPOCHS:-6}; lr=${LR:-5e-5}
here=$(cd "$(dirname "$0")" && pwd)
run() {  # NAME ARGS...: one fusion_accuracy.py run in the background, its own home, log and JSON
  local name=$1; shift
  FUSIONQ_HOME="$out/home-$name" timeout "$limit" python3 "$here/fusion_accuracy.py" --data-dir "$data" \
    --encoder "$model" --device "${DEVICE:-cuda}" --probabilities-dir "$out/probabilities" --out "$out/$name.json" "$@" \
    > "$out/$name.log" 2>&1 || echo "!! $name: exit $?" >> "$out/$name.log"
}
ensemble() {  # NAME FILES...: the named runs' average, when at least two of them finished
  local name=$1; shift
  local found=(); for f in "$@"; do [ -f "$f" ] && found+=("$f"); done
  [ ${#found[@]} -ge 2 ] || { echo "ensemble $name: fewer than two runs finished"; return; }
  echo "== ensemble $name"
  python3 "$here/ensemble_accuracy.py" --test "$data/ag_news/test.csv" --out "$out/ensemble-$name.json" "${found[@]}"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  started=$(date +%s)
  for seed in $seeds; do
    run "ag4k-seed$seed" --datasets ag_news-4k --variants finetuned --finetune-epochs "$epochs" --finetune-lr "$lr" \
      --seed "$seed" --split-seed "$split_seed" &
  done
  for seed in $self_seeds; do
    run "ag4k-selftrained-seed$seed" --datasets ag_news-4k --variants selftrained-finetuned \
      --finetune-epochs "${SELF_EPOCHS:-4}" --finetune-lr "$lr" --seed "$seed" --split-seed "$split_seed" &
  done
  [ "$with_r8" = 1 ] && run r8 --datasets r8 --variants finetuned --finetune-epochs "${R8_EPOCHS:-3}" --finetune-lr "$lr" &
  wait
  echo "all runs ended after $(( $(date +%s) - started )) s"
  for log in "$out"/*.log; do echo "== $(basename "$log")"; grep -E '^  |^!!|Error|error' "$log" | tail -5; done
  p="$out/probabilities/ag_news-4k"
  tuned=(); for seed in $seeds; do tuned+=("${p}_finetuned_seed$seed.npz"); done
  selfs=(); for seed in $self_seeds; do selfs+=("${p}_selftrained-finetuned_seed$seed.npz"); done
  ensemble finetuned "${tuned[@]}"
  ensemble selftrained "${selfs[@]}"
  [ ${#selfs[@]} -ge 1 ] && ensemble all "${tuned[@]}" "${selfs[@]}"
  rm -rf "$out"/home-*
} 2>&1 | tee "$out/log.txt"

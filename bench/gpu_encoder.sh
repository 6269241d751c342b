#!/usr/bin/env bash
# Issue 10, item 7: the encoder's GPU path against sentence-transformers on the same GPU, in one call.
#
#   bash bench/gpu_encoder.sh MODEL DATA_DIR OUT_DIR
#
# MODEL: all-MiniLM-L6-v2 (a folder or the Hub id). DATA_DIR: ag_news_train.csv and r8_test.csv
# (text,label). Runs bench/encoder_speed.py on short texts (AG News) with a sweep of token budgets,
# on long ones (R8), on a randomly initialised BERT-base-sized model (768 wide, 12 layers: the
# size of all-mpnet-base-v2; speed does not depend on the weights' values), and
# bench/finetune_speed.py for both sizes. One JSON per run and log.txt land in OUT_DIR.
# Sizes: N_SHORT (20000), N_BASE (10000), N_TUNE (4096 fine-tuning texts), REPEATS (3).
set -uo pipefail
if [ $# -ne 3 ]; then echo "usage: bash bench/gpu_encoder.sh MODEL DATA_DIR OUT_DIR" >&2; exit 2; fi
model=$1; data=$2; out=$3
for f in ag_news_train.csv r8_test.csv; do
  [ -f "$data/$f" ] || { echo "gpu_encoder.sh: $data/$f is missing (DATA_DIR needs ag_news_train.csv and r8_test.csv)" >&2; exit 2; }
done
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
n_short=${N_SHORT:-20000}; n_base=${N_BASE:-10000}; n_tune=${N_TUNE:-4096}; repeats=${REPEATS:-3}
here=$(cd "$(dirname "$0")" && pwd)
base=$(mktemp -d /tmp/fusionq-bert-base-XXXX)
trap 'rm -rf "$base"' EXIT
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  python3 -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| sentence-transformers', st.__version__)"
  python3 - "$model" "$base" <<'PY'
import sys
from transformers import AutoTokenizer, BertConfig, BertModel
from shared.encoders.hf import resolve_model_path
tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(sys.argv[1]))
config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=512)
BertModel(config).save_pretrained(sys.argv[2])
tokenizer.save_pretrained(sys.argv[2])
print("BERT-base-sized random model saved:", sys.argv[2])
PY
  step() { echo "== $*"; timeout 240 python3 "$@" || echo "!! exit $? from: $*"; }
  step "$here/encoder_speed.py" --model "$model" --data "$data/ag_news_train.csv" --n "$n_short" --repeats "$repeats" \
       --budgets 8192,16384,65536:1024,131072:2048 --out "$out/minilm_agnews.json"
  step "$here/encoder_speed.py" --model "$model" --data "$data/r8_test.csv" --n "$n_short" --repeats "$repeats" \
       --out "$out/minilm_r8.json"
  step "$here/encoder_speed.py" --model "$base" --data "$data/ag_news_train.csv" --n "$n_base" --repeats "$repeats" \
       --budgets 65536:1024 --out "$out/base_agnews.json"
  step "$here/finetune_speed.py" --model "$model" --data "$data/ag_news_train.csv" --n "$n_tune" --repeats 1 --out "$out/finetune_minilm.json"
  step "$here/finetune_speed.py" --model "$base" --data "$data/ag_news_train.csv" --n "$n_tune" --repeats 1 --out "$out/finetune_base.json"
} 2>&1 | grep -v -E '^Loading weights|it/s\]$' | tee "$out/log.txt"

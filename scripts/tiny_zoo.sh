#!/usr/bin/env bash
# Train and evaluate every model (tiny, random init) for a few epochs on one dataset: a smoke test of the zoo.
#   bash scripts/tiny_zoo.sh [DATA] [EPOCHS] [extra train.py args...]
#   bash scripts/tiny_zoo.sh kvasir 3 --data-root data --prompts-root prompts_json
set -euo pipefail
DATA=${1:-synthetic}; EPOCHS=${2:-3}; shift $(( $# > 2 ? 2 : $# )) || true
PY=${PY:-python}
for MODEL in ${MODELS:-clipseg cris biomedclipseg biomedclipseg_d unet unetplusplus deeplabv3plus}; do
  echo "=== $MODEL"
  MC=""; [[ $DATA == synthetic && $MODEL =~ ^(unet|unetplusplus|deeplabv3plus)$ ]] && MC=--multiclass  # several shapes per image
  $PY train.py --model "$MODEL" --size tiny --weights none --data "$DATA" --prompt p3 --epochs "$EPOCHS" \
      --lr 1e-3 --batch-size 32 $MC "$@" | grep -E "^(model|epoch|stopped|.*test prompt)" || echo "FAILED: $MODEL"
done

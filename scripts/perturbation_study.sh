#!/usr/bin/env bash
# The paper's prompt-robustness study for one trained run: evaluate the unperturbed test manifest and every
# perturbed manifest, then report the relative Dice change per attribute and perturbation kind.
#   bash scripts/perturbation_study.sh RUN DATA PROMPT [extra evaluate.py args...]
#   bash scripts/perturbation_study.sh runs/kvasir/clipseg/p9/<stamp> kvasir p9
# Perturbed manifests are made first if missing: prompts_json/<DATA>/perturbed/ (perturb_prompts.py).
set -euo pipefail
RUN=$1; DATA=$2; PROMPT=$3; shift 3
PY=${PY:-python}
PROMPTS_ROOT=${PROMPTS_ROOT:-prompts_json}
PERTURBED=${PERTURBED:-$PROMPTS_ROOT/$DATA/perturbed}
if [ ! -d "$PERTURBED" ]; then
  $PY perturb_prompts.py --manifest "$PROMPTS_ROOT/$DATA/test.json" --out "$PERTURBED"
fi
TAG=study$(date +%Y%m%d%H%M%S)
$PY evaluate.py --checkpoint "$RUN" --data "$DATA" --prompt "$PROMPT" --prompts-root "$PROMPTS_ROOT" --tag "$TAG" "$@"
for M in "$PERTURBED"/*__*__*.json; do
  $PY evaluate.py --checkpoint "$RUN" --data "$DATA" --prompt "$PROMPT" --prompts-root "$PROMPTS_ROOT" \
      --manifest "$M" --tag "$TAG" "$@"
done
$PY scripts/perturbation_report.py "$RUN/eval" --csv "$RUN/eval/perturbation_$TAG.csv"

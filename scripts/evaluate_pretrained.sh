#!/usr/bin/env bash
# Measure a model as the bundled models' cards were measured; the reports go into OUT.
#
#   scripts/evaluate_pretrained.sh MODEL OUT [SWEEP] [FAST_STEPS]
#   scripts/evaluate_pretrained.sh runs/pretrained-mnist docs/reports/mnist 1,1.5,2,3 10
#
# 1. a guidance sweep at n = 1,000 (report + plot), to choose the default guidance;
# then, at the model's default sampler settings (set GUIDANCE=w to override the stored one):
# 2. n = 2,000 with the classification accuracy score (two small CNNs trained for 10 epochs);
# 3. the fast setting (FAST_STEPS steps) at n = 2,000; 4. n = 10,000, keeping the samples.
# Each report holds the real floor at its own n (class-balanced like the samples).
set -euo pipefail
model=$1 out=$2 sweep=${3:-1,1.5,2,3} fast=${4:-10}
w=(${GUIDANCE:+--guidance "$GUIDANCE"})
mkdir -p "$out"
if [ "${SKIP_SWEEP:-0}" != 1 ]; then
  mnistdiff evaluate -k "$model" --n 1000 --guidance-sweep "$sweep" -o "$out/sweep-n1000.json"
fi
mnistdiff evaluate -k "$model" --n 2000 "${w[@]}" --cas -o "$out/n2000.json"
mnistdiff evaluate -k "$model" --n 2000 "${w[@]}" --steps "$fast" -o "$out/fast-n2000.json"
mnistdiff evaluate -k "$model" --n 10000 "${w[@]}" --npz "$out/n10000.npz" -o "$out/n10000.json"

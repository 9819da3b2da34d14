#!/usr/bin/env bash
# Train the two bundled models side by side on one GPU in a fixed time budget, export them as
# bundles (EMA weights in float16) and measure them at several guidance settings (issue 9).
#
#   bash scripts/gpu_pretrain.sh OUT MNIST_DIR FASHION_DIR [TRAIN_SECONDS]
#
# 1. times both configs' training steps concurrently on random images (scripts/bench_train.py),
#    as they will run, and sets each run's train.max_steps to fill TRAIN_SECONDS (default 270)
#    so the cosine learning-rate decay ends on time;
# 2. trains configs/pretrained-mnist.yaml and configs/pretrained-fashion-mnist.yaml at
#    the same time (small U-Nets leave the GPU idle between kernel launches, so two processes
#    share it well); a run that overruns by a minute is stopped by SIGTERM, which writes a checkpoint;
# 3. exports each EMA as OUT/<name>.pt (a bundle checkpoint, pretrained.bundle with half=True);
# 4. evaluates each export: guidance sweeps at n = 10,000 and n = 2,000 (20 steps; Fashion-MNIST on
#    karras spacing, its shipped default since 0.5.1) and at 10 steps,
#    most important first, each cut off at DEADLINE seconds after the start (default 560); JSON
#    reports go into OUT/reports.tar.gz with the training logs and summaries.
# ONLY="fashion-mnist" (or "mnist") trains and evaluates that model alone, with the whole GPU.
# DEVICE=cpu with a few seconds of budget and small EVAL_N runs the whole pipeline as a dry run.
set -uo pipefail
out=$1 mnist_dir=$2 fashion_dir=$3 budget=${4:-270}
device=${DEVICE:-cuda} py=${PYTHON:-python3} work=${WORK:-/tmp/gpu-pretrain}
sets=(); for kv in ${SETS:-}; do sets+=(-s "$kv"); done  # extra overrides (dry runs)
deadline=${DEADLINE:-560}  # seconds after the start by which every evaluation has ended
n_big=${EVAL_N:-10000} n_small=${EVAL_N_SMALL:-2000} eval_batch=${EVAL_BATCH:-2500}
mkdir -p "$out" "$work/reports"
log() { echo "[$(date +%T) +${SECONDS}s] $*"; }
pack() { tar -czf "$out/reports.tar.gz" -C "$work" reports $(cd "$work" && ls -d */*.log */summary.json \
             */loss.png */samples 2>/dev/null) 2>/dev/null; }
declare -A data=([mnist]=$mnist_dir [fashion-mnist]=$fashion_dir)
names=(${ONLY:-mnist fashion-mnist})
for m in "${names[@]}"; do [ -n "${data[$m]+x}" ] || { echo "ONLY: unknown model $m (mnist, fashion-mnist)"; exit 2; }; done
want() { [[ " ${names[*]} " == *" $1 "* ]]; }

[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import torch, mnistdiff; print('torch', torch.__version__, 'mnistdiff', mnistdiff.__version__)" || exit 1

log "1. throughput, ${names[*]} at once"
for m in "${names[@]}"; do
  timeout 150 $py scripts/bench_train.py -c "configs/pretrained-$m.yaml" --device "$device" \
    --as-configured --steps "${BENCH_STEPS:-60}" --warmup "${BENCH_WARMUP:-15}" --json "${sets[@]}" > "$work/reports/bench-$m.json" &
done
wait
declare -A steps
for m in "${names[@]}"; do
  steps[$m]=$($py -c "import json,sys; r = json.load(open(sys.argv[1]))[0]; \
print(max(100, int(r['images_per_s'] / r['batch'] * $budget * 0.92) // 100 * 100))" \
    "$work/reports/bench-$m.json") || { log "bench of $m failed"; exit 1; }
  log "$m: $(grep -o '"images_per_s": [0-9.]*' "$work/reports/bench-$m.json") -> ${steps[$m]} steps"
done

log "2. training, ${names[*]} at once, ${budget}s"
for m in "${names[@]}"; do
  timeout $((budget + 60)) $py -m mnistdiff train -c "configs/pretrained-$m.yaml" -o "$work/$m" \
    --device "$device" --data-dir "${data[$m]}" --no-progress "${sets[@]}" -s "train.max_steps=${steps[$m]}" \
    > "$work/train-$m.log" 2>&1 &
done
wait
for m in "${names[@]}"; do tail -n 4 "$work/train-$m.log"; cp "$work/train-$m.log" "$work/$m/" 2>/dev/null; done

log "3. export"
for m in "${names[@]}"; do
  $py - "$work/$m/checkpoints/last.pt" "$m" "$work/models" <<'PY' && cp "$work/models/$m/model.pt" "$out/$m.pt"
import sys
from pathlib import Path
from mnistdiff.pretrained import bundle
entry = bundle(sys.argv[1], sys.argv[2], {}, half=True, models_dir=Path(sys.argv[3]))
print(sys.argv[2], entry["bytes"], entry["sha256"][:12])
PY
done
pack

log "4. evaluate"
evaluate() {  # NAME LABEL ARGS...
  local m=$1 label=$2 left=$((deadline - SECONDS)); shift 2
  if [ "$left" -lt 20 ]; then log "$m $label skipped: ${left}s left"; return; fi
  timeout "$left" $py -m mnistdiff evaluate -k "$out/$m.pt" --data-dir "${data[$m]}" --device "$device" \
    --batch-size "$eval_batch" -o "$work/reports/$m-$label.json" "$@" > "$work/reports/$m-$label.log" 2>&1
  log "$m $label rc=$?"; pack
  $py - "$work/reports/$m-$label.json" <<'PY' || tail -n 5 "$work/reports/$m-$label.log"
import json, sys
r = json.load(open(sys.argv[1])); f = r["real_floor"]
print(f"  floor n={f['n']}: acc {100 * f['accuracy']:.2f} %, FID {f['fid']:.4f}")
for x in r["results"]:
    print(f"  w={x['guidance']} steps={x['steps']} nfe={x['nfe']}: acc {100 * x['accuracy']:.2f} %, "
          f"FID {x['fid']:.4f} = {x['fid'] / f['fid']:.2f}x, s/100 {x.get('seconds_per_100')}")
PY
}
want mnist && (
  evaluate mnist n10000-i60 --n "$n_big" --guidance-sweep 1,1.25,1.5,1.75,2,2.5
  evaluate mnist n2000-i60 --n "$n_small" --guidance-sweep 1,1.25,1.5,1.75,2,2.5
  evaluate mnist n2000-i60-s10 --n "$n_small" --steps 10 --guidance-sweep 1.25,1.5,2
  evaluate mnist n10000-i0 --n "$n_big" --guidance-interval 0,1 --guidance-sweep 1.25,1.5,2
) &
want fashion-mnist && (
  evaluate fashion-mnist n10000-i0 --n "$n_big" --spacing karras --guidance-interval 0,1 --guidance-sweep 1.25,1,1.5
  evaluate fashion-mnist n2000-i0 --n "$n_small" --spacing karras --guidance-interval 0,1 --guidance-sweep 1.25,1,1.5
  evaluate fashion-mnist n10000-i16 --n "$n_big" --spacing karras --guidance-sweep 1.5,2,2.5
) &
wait
pack
log "done"; ls -la "$out"

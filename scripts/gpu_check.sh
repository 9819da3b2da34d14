#!/usr/bin/env bash
# Every GPU check in one prepared run, for a GPU machine lent for ~15 minutes (starts included):
#
#   bash scripts/gpu_check.sh OUT MNIST_DIR FASHION_DIR        # well under 10 minutes on one GPU
#
# Stages, most important first, each under its own `timeout` (seconds at STAGE_SCALE=1); a stage
# that fails or runs out of time is recorded and the next one starts:
#   00-nvidia-smi, 00-torch, 00-doctor  30 each  the device, torch and `mnistdiff doctor`
#   01-cuda-tests             50   tests/test_cuda.py except the compile case (they skip on a CPU)
#   01b-cuda-compile-test     70   its bf16 + torch.compile + channels_last training case
#   02*-sampling             100   scripts/bench_sampling.py, shared by four runs, each its JSON:
#                                  02 seed-ddpm500, mnist, mnist-10, student (mnist-fast);
#                                  02b the fashion-mnist model; 02c mnist-plain and the
#                                  guidance-interval rows; 02d mnist-compile
#   03*-train-bench           70   scripts/bench_train.py --as-configured, shared by: 03 BENCH_CONFIG
#                                  (pretrained-mnist); 03b TRAIN_CONFIG (pretrained-fashion-mnist,
#                                  sets the retrain's steps); 03c BENCH_CONFIG at batch 1024;
#                                  03d BENCH_CONFIG with torch.compile
#   04-fashion-train    130..240   `mnistdiff train -c TRAIN_CONFIG` on FASHION_DIR, with
#                                  train.max_steps set from 03b's images/s to fill the time left
#                                  before 05 (at least 130 s); stopped by SIGTERM at its limit,
#                                  which checkpoints, so the work is kept
#   05-fashion-nEVAL_N       110   `mnistdiff evaluate` of that run at n = EVAL_N (10,000)
# The whole run ends by TOTAL (570 s) after the start: a stage gets at most what is left.
#
# Only a few files come back from a lent machine's $OUT (8 files, 16 MiB each), so the stages write
# into WORK (a fresh temporary folder): NAME.log and NAME.json for every stage (where a command
# wrote no JSON, or failed, NAME.json holds its status), and the run folder fashion-run/. After
# every stage, OUT gets: summary.json and summary.txt (each stage's status, exit code, seconds,
# limit and a one-line result; a stage still running when the run was killed reads "running"),
# results.tar.gz (WORK without checkpoints) and fashion-nEVAL_N.json (the evaluation report).
#
# Environment (defaults in brackets; DEVICE=cpu shrinks the benchmarks' defaults for a dry run):
#   PYTHON [python; python3 where python has no torch]  DEVICE [cuda]  WORK [mktemp -d]  TOTAL [570]
#   STAGE_SCALE [1]: multiplies TOTAL and every stage's limit; T_INFO T_TESTS T_COMPILE_TEST
#     T_SAMPLING T_BENCH T_TRAIN T_TRAIN_MAX T_EVAL: the limits above; GRACE [15]: seconds
#     between SIGTERM and SIGKILL, kept free before TOTAL
#   SAMPLING_ROWS, SAMPLING_FASHION_ROWS, SAMPLING_MORE_ROWS, SAMPLING_COMPILE_ROWS: the rows of
#     02..02d (empty skips one); STUDENT [mnist-fast]; SAMPLING_ARGS [cpu: --repeats 1
#     --seed-steps 1 --skip-batch1000]: more bench_sampling.py options
#   BENCH_CONFIG [configs/pretrained-mnist.yaml]  BENCH_STEPS [60; cpu 3]  BENCH_WARMUP [15; cpu 1]
#     BENCH_BATCH [1024; empty skips 03c]  BENCH_COMPILE [1; cpu 0]
#   TRAIN_CONFIG [configs/pretrained-fashion-mnist.yaml]  DATASET [the config's]: the retrain's
#     data.dataset (and evaluate --dataset), e.g. mnist to retrain on MNIST files; SETS: more
#     KEY=VALUE overrides (space-separated) for the retrain and 03b; TRAIN_STEPS: a fixed
#     train.max_steps; FALLBACK_STEPS [1000; cpu 20] when 03b failed; TRAIN_OVERHEAD [30; cpu 15]:
#     seconds of the retrain that are not training steps (start-up, final checkpoint)
#   EVAL_N [10000]  EVAL_BATCH [2500 on cuda]
#
# A dry run on a CPU (about 3 minutes; the tiny config trains on MNIST, so MNIST can stand in for
# FASHION_DIR; with configs/pretrained-fashion-mnist.yaml add DATASET=mnist):
#   OMP_NUM_THREADS=1 PYTHON=.venv/bin/python DEVICE=cpu TRAIN_CONFIG=configs/tiny.yaml \
#     BENCH_CONFIG=configs/tiny.yaml EVAL_N=100 STAGE_SCALE=0.3 \
#     bash scripts/gpu_check.sh /tmp/gpucheck-dry ../shared/data/mnist ../shared/data/mnist
set -uo pipefail

# ----------------------------------------------------------------------------- settings
abspath() { case $1 in /*|'') printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
maybe_abs() { if [ -e "$1" ]; then abspath "$1"; else printf '%s\n' "$1"; fi; }  # else: repo-relative

out=$(abspath "${1:-${OUT:-gpu-check}}")
mnist_dir=$(maybe_abs "${2:-${MNISTDIFF_DATA:-../shared/data/mnist}}")
fashion_dir=$(maybe_abs "${3:-/usr/share/datasets/fashion-mnist}")
if [ -n "${PYTHON:-}" ]; then py=$PYTHON  # else python, or python3 where only that one has torch
elif command -v python > /dev/null && python -c 'import torch' 2>/dev/null; then py=python
elif command -v python3 > /dev/null; then py=python3; else py=python; fi
case $py in */*) py=$(maybe_abs "$py") ;; esac
device=${DEVICE:-cuda}
train_config=$(maybe_abs "${TRAIN_CONFIG:-configs/pretrained-fashion-mnist.yaml}")
bench_config=$(maybe_abs "${BENCH_CONFIG:-configs/pretrained-mnist.yaml}")
if [ -n "${WORK:-}" ]; then
  work=$(abspath "$WORK")
  if [ -e "$work" ] && [ -n "$(ls -A "$work" 2>/dev/null)" ]; then
    echo "WORK=$work is not empty: give a new or empty folder" >&2; exit 2
  fi
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
fi
mkdir -p "$out" "$work" || exit 2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
cd "$root" || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # mnistdiff from this checkout, installed or not
export PYTHONUNBUFFERED=1                            # a killed stage's log is complete
unset MNISTDIFF_DATA  # the retrain and its evaluation read FASHION_DIR alone (no fallback to it)

if [ "$device" = cpu ]; then cpu=1; else cpu=0; fi
pick() { if [ "$cpu" = 1 ]; then printf '%s\n' "$2"; else printf '%s\n' "$1"; fi; }  # CUDA CPU
scale=${STAGE_SCALE:-1}
secs() { awk -v s="$1" -v k="$scale" 'BEGIN { v = int(s * k + 0.5); print (v < 1 ? 1 : v) }'; }
total=$(secs "${TOTAL:-570}")
t_info=$(secs "${T_INFO:-30}")
t_tests=$(secs "${T_TESTS:-50}")
t_compile=$(secs "${T_COMPILE_TEST:-70}")
t_sampling=$(secs "${T_SAMPLING:-100}")
t_bench=$(secs "${T_BENCH:-70}")
t_train=$(secs "${T_TRAIN:-130}")
t_train_max=$(secs "${T_TRAIN_MAX:-240}")
t_eval=$(secs "${T_EVAL:-110}")
grace=${GRACE:-$(pick 15 5)}
min_limit=3  # a stage with less time than this left is skipped

student=${STUDENT:-mnist-fast}
sampling_args=${SAMPLING_ARGS-$(pick "" "--repeats 1 --seed-steps 1 --skip-batch1000")}
sampling_rows=${SAMPLING_ROWS-$(pick seed-ddpm500,mnist,mnist-10,student seed-ddpm500,student)}
sampling_fashion_rows=${SAMPLING_FASHION_ROWS-$(pick mnist,mnist-10 "")}
sampling_more_rows=${SAMPLING_MORE_ROWS-$(pick mnist-plain,mnist-interval,mnist-10-interval "")}
sampling_compile_rows=${SAMPLING_COMPILE_ROWS-$(pick mnist-compile "")}
bench_steps=${BENCH_STEPS:-$(pick 60 3)}
bench_warmup=${BENCH_WARMUP:-$(pick 15 1)}
bench_batch=${BENCH_BATCH-1024}
bench_compile=${BENCH_COMPILE:-$(pick 1 0)}
fallback_steps=${FALLBACK_STEPS:-$(pick 1000 20)}
train_overhead=${TRAIN_OVERHEAD:-$(pick 30 15)}
eval_n=${EVAL_N:-10000}
eval_batch=${EVAL_BATCH-$(pick 2500 "")}
sets=(); for kv in ${SETS:-}; do sets+=(-s "$kv"); done
[ -n "${DATASET:-}" ] && sets+=(-s "data.dataset=$DATASET")

# ----------------------------------------------------------------------------- the summary
started=$(date '+%Y-%m-%d %H:%M:%S %z')
names=() statuses=() rcs=() times=() limits=() notes=()

jstr() {  # a JSON string of $1 (quotes, backslashes; control characters dropped)
  local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\037')"; }

write_summary() {  # $1: true once every stage has run
  local i n=${#names[@]} tmp="$out/.summary.tmp"
  {
    printf '{\n  "script": "scripts/gpu_check.sh", "started": %s, "elapsed_s": %d, "done": %s,\n' \
      "$(jstr "$started")" "$SECONDS" "${1:-false}"
    printf '  "device": %s, "python": %s, "stage_scale": %s, "total_limit_s": %d,\n' \
      "$(jstr "$device")" "$(jstr "$py")" "$(jstr "$scale")" "$total"
    printf '  "mnist_dir": %s, "fashion_dir": %s, "train_config": %s, "work": %s,\n' \
      "$(jstr "$mnist_dir")" "$(jstr "$fashion_dir")" "$(jstr "$train_config")" "$(jstr "$work")"
    printf '  "files": "results.tar.gz holds NAME.log and NAME.json of every stage",\n  "stages": ['
    for ((i = 0; i < n; i++)); do
      printf '%s\n    {"name": %s, "status": %s, "rc": %s, "seconds": %s, "limit_s": %s, "note": %s}' \
        "$([ "$i" -gt 0 ] && echo ,)" "$(jstr "${names[i]}")" "$(jstr "${statuses[i]}")" \
        "${rcs[i]}" "${times[i]}" "${limits[i]}" "$(jstr "${notes[i]}")"
    done
    printf '\n  ]\n}\n'
  } > "$tmp" && mv "$tmp" "$out/summary.json"
  {
    echo "gpu_check.sh, started $started, ${SECONDS}s elapsed$([ "${1:-false}" = true ] && echo ', done')"
    echo "device $device, python $py, stage scale $scale, total limit ${total}s"
    for ((i = 0; i < n; i++)); do
      printf '%-28s %-11s rc=%-4s %4ss of %4ss  %s\n' "${names[i]}" "${statuses[i]}" "${rcs[i]}" \
        "${times[i]}" "${limits[i]}" "${notes[i]}"
    done
    for ((i = 0; i < n; i++)); do
      case ${statuses[i]} in failed|timeout|killed)
        echo; echo "--- ${names[i]}.log, last lines:"; tail -n 8 "$work/${names[i]}.log" 2>/dev/null ;;
      esac
    done
  } > "$tmp" && mv "$tmp" "$out/summary.txt"
}

pack() {  # WORK without checkpoints into OUT/results.tar.gz, and the evaluation report beside it
  tar -czf "$out/.results.tmp" -C "$work" --exclude='*.pt' --exclude='.lock' . 2>/dev/null &&
    mv "$out/.results.tmp" "$out/results.tar.gz"
  [ -f "$work/05-fashion-n$eval_n.json" ] && cp "$work/05-fashion-n$eval_n.json" "$out/fashion-n$eval_n.json"
}

status_json() {  # NAME STATUS RC SECONDS LIMIT NOTE: the stage's JSON when its command wrote none
  printf '{"stage": %s, "status": %s, "rc": %s, "seconds": %s, "limit_s": %s, "note": %s, "log": %s}\n' \
    "$(jstr "$1")" "$(jstr "$2")" "$3" "$4" "$5" "$(jstr "$6")" "$(jstr "$1.log")" > "$work/$1.json"
}

record() {  # NAME STATUS RC SECONDS LIMIT NOTE: set (or add) the stage's row, write the summary
  local i
  for ((i = 0; i < ${#names[@]}; i++)); do [ "${names[i]}" = "$1" ] && break; done
  names[i]=$1 statuses[i]=$2 rcs[i]=$3 times[i]=$4 limits[i]=$5 notes[i]=$6
  write_summary
}

# digest KIND NAME [ARGS]: a one-line result of a stage from its files (no torch import), or "".
# tests: also writes NAME.json from the pytest -v log.
digest() {
  timeout 30 "$py" - "$@" "$work" 2>/dev/null <<'PY' | head -n 1 | cut -c1-400
import json, re, sys
from pathlib import Path
kind, name, work = sys.argv[1], sys.argv[2], Path(sys.argv[-1])
def load(p):
    return json.loads(Path(p).read_text())
if kind == "tests":
    found = {}
    for line in (work / f"{name}.log").read_text(errors="replace").splitlines():
        m = re.match(r"(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", line)
        if m:
            found.setdefault(m.group(2).lower(), []).append(m.group(1))
    last = [ln for ln in (work / f"{name}.log").read_text(errors="replace").splitlines()
            if re.search(r"\d+ (passed|failed|skipped|error|deselected)", ln)]
    (work / f"{name}.json").write_text(json.dumps({**found, "result": last[-1].strip("= ") if last
                                                   else None}, indent=2) + "\n")
    print(last[-1].strip("= ") if last else ", ".join(f"{len(v)} {k}" for k, v in found.items()))
elif kind == "torch":
    r = load(work / f"{name}.json")
    print(f"torch {r['torch']}, cuda available {r['cuda_available']}"
          + (f", {r['device_name']}" if r.get("device_name") else "") + f", mnistdiff {r.get('mnistdiff')}")
elif kind == "doctor":
    lines = [ln.split(None, 1) for ln in (work / f"{name}.log").read_text(errors="replace").splitlines()
             if ln and not ln.startswith("#")]
    counts = {}
    for w in lines:
        if w[0] in ("ok", "warn", "FAIL"):
            counts[w[0]] = counts.get(w[0], 0) + 1
    bad = [w[1].split(":")[0] for w in lines if w[0] != "ok" and len(w) > 1 and w[0] in counts]
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + (f" ({'; '.join(bad)})" if bad else ""))
elif kind == "sampling":
    rows = load(work / f"{name}.json")["rows"]
    parts = []
    for r in rows:
        if "error" in r:
            parts.append(f"{r['row']} error"); continue
        p = f"{r['row']} {r['seconds_per_100']:.3g} s/100"
        if r.get("images_per_second_1000"):
            p += f", {r['images_per_second_1000']:.4g} img/s@1000"
        if r.get("ratio"):
            p += f", x{r['ratio']:.0f}"
        parts.append(p)
    print("; ".join(parts))
elif kind == "bench":
    r = load(work / f"{name}.json")[0]
    print(f"{r['images_per_s']:,.0f} images/s, {r['ms_per_step']:.1f} ms/step, batch {r['batch']}, "
          f"amp {r['amp']}, compile {r['compile']}, warmup {r['warmup_s']:.1f} s, "
          f"peak {r['peak_memory_mb']:,.0f} MiB")
elif kind == "steps":  # NAME BUDGET OVERHEAD: train.max_steps to fill BUDGET seconds
    r = load(work / f"{name}.json")[0]
    budget, overhead = float(sys.argv[3]), float(sys.argv[4])
    n = int(r["images_per_s"] / r["batch"] * max(budget - overhead, 0.25 * budget) * 0.9)
    print(max(10, n // 100 * 100 if n >= 1000 else n))
elif kind == "train":
    s = load(work / "fashion-run" / "summary.json")
    print(f"step {s['step']} of {s['total_steps']}, {s['images_per_s']:,.0f} images/s, "
          f"{s['train_seconds']:.0f} s training, final loss {s['final_loss']:.4f}"
          + (", stopped by signal (checkpoint kept)" if s.get("interrupted") else ""))
elif kind == "eval":
    r = load(work / f"{name}.json")
    f = r.get("real_floor") or {}
    parts = [f"w={x['guidance']} steps={x['steps']}: acc {100 * x['accuracy']:.2f} %, FID "
             f"{x['fid']:.4f}" + (f" ({x['fid'] / f['fid']:.2f}x floor)" if f.get("fid") else "")
             for x in r["results"]]
    if f:
        parts.append(f"floor n={f['n']}: acc {100 * f['accuracy']:.2f} %, FID {f['fid']:.4f}")
    print("; ".join(parts))
PY
}

# stage NAME LIMIT CMD...: CMD under `timeout` (at most LIMIT seconds, and no later than TOTAL),
# its output in WORK/NAME.log; with capture=1 its stdout is the stage's JSON (WORK/NAME.json),
# else CMD writes WORK/NAME.json itself or a status JSON takes its place. Sets stage_rc.
stage() {
  local name=$1 limit=$2 left t0 rc status last note=""; shift 2
  left=$((total - SECONDS - grace))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt "$min_limit" ]; then
    skip "$name" "no time left (${left}s before TOTAL=${total}s)"; stage_rc=125; return
  fi
  local shown="$*"; shown=${shown//$'\n'/ }
  echo "[+${SECONDS}s] $name (limit ${limit}s): ${shown:0:200}"
  current=$name
  record "$name" running null 0 "$limit" "started at +${SECONDS}s"
  printf '# %s\n# limit %ss (SIGTERM, SIGKILL %ss later), started at +%ss\n' "$shown" "$limit" \
    "$grace" "$SECONDS" > "$work/$name.log"
  t0=$SECONDS
  if [ "${capture:-0}" = 1 ]; then
    timeout -s TERM -k "$grace" "$limit" "$@" > "$work/$name.stdout" 2>> "$work/$name.log"; rc=$?
  else
    timeout -s TERM -k "$grace" "$limit" "$@" >> "$work/$name.log" 2>&1; rc=$?
  fi
  case $rc in 0) status=ok ;; 124) status=timeout ;; 137) status=killed ;; *) status=failed ;; esac
  [ "$status" = killed ] && note="killed (SIGKILL) ${grace}s after SIGTERM at the limit; "
  [ "$status" = timeout ] && note="stopped by SIGTERM at the limit; "
  last=$(grep -v '^#' "$work/$name.log" | grep -v '^[[:space:]]*$' | tail -n 1)
  if [ "${capture:-0}" = 1 ]; then
    # the JSON on stdout, from its first line "[" or "{" on (some libraries print before it)
    if [ "$rc" = 0 ] && "$py" -c '
import json, sys
text = open(sys.argv[1]).read()
lines = text.splitlines(keepends=True)
for i, line in enumerate(lines):
    if line.strip() in ("[", "{") or i == 0:
        try:
            data = json.loads("".join(lines[i:]))
        except ValueError:
            continue
        json.dump(data, open(sys.argv[2], "w"), indent=2)
        break
else:
    sys.exit(1)' "$work/$name.stdout" "$work/$name.json" 2>/dev/null
    then rm -f "$work/$name.stdout"
    else
      [ -s "$work/$name.stdout" ] && { echo "# stdout:"; cat "$work/$name.stdout"; } >> "$work/$name.log"
      rm -f "$work/$name.stdout" "$work/$name.json"
    fi
  fi
  echo "# rc=$rc ($status) in $((SECONDS - t0))s" >> "$work/$name.log"
  [ -s "$work/$name.json" ] || status_json "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit" "$note$last"
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit" "$note"
  current=""
  echo "[+${SECONDS}s] $name: $status (rc=$rc) in $((SECONDS - t0))s"
  tail -n 5 "$work/$name.log" 2>/dev/null | head -n 4 | sed 's/^/    /'
  stage_rc=$rc
}

annotate() {  # NAME KIND: add the stage's one-line result to its row
  local i d; d=$(digest "$2" "$1")
  for ((i = 0; i < ${#names[@]}; i++)); do
    if [ "${names[i]}" = "$1" ]; then
      [ -z "$d" ] && [ "${statuses[i]}" != ok ] &&
        d=$(grep -v '^#' "$work/$1.log" 2>/dev/null | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-300)
      notes[i]="${notes[i]}$d"
      [ -n "${notes[i]}" ] && echo "    -> ${notes[i]}"
    fi
  done
  write_summary; pack
}

skip() {  # NAME REASON
  echo "[+${SECONDS}s] $1 skipped: $2"; echo "# skipped: $2" > "$work/$1.log"
  record "$1" skipped null 0 0 "$2"; status_json "$1" skipped null 0 0 "$2"; pack
}

current=""
on_signal() {  # the whole script stopped from outside: say so in the summary, keep what is there
  [ -n "$current" ] && record "$current" interrupted null 0 0 "the script got SIGTERM/SIGINT here"
  write_summary; pack; echo "gpu_check: interrupted at +${SECONDS}s" >&2; exit 143
}
trap on_signal TERM INT HUP

echo "gpu_check: OUT=$out WORK=$work device=$device python=$py scale=$scale total=${total}s"
write_summary

# ----------------------------------------------------------------------------- 0. the machine
if command -v nvidia-smi > /dev/null; then
  stage 00-nvidia-smi "$t_info" bash -c 'nvidia-smi; echo; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv'
  annotate 00-nvidia-smi none
else
  skip 00-nvidia-smi "nvidia-smi not installed"
fi
stage 00-torch "$t_info" "$py" -c '
import json, sys, torch
print(torch.__version__, torch.cuda.is_available())
r = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
     "cuda_available": torch.cuda.is_available(),
     "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
     "device_count": torch.cuda.device_count(), "python": sys.version.split()[0]}
try:
    import mnistdiff; r["mnistdiff"] = mnistdiff.__version__
except Exception as e:
    r["mnistdiff"] = f"import failed: {e!r}"
print(r)
json.dump(r, open(sys.argv[1], "w"), indent=2)' "$work/00-torch.json"
annotate 00-torch torch
stage 00-doctor "$t_info" env MNISTDIFF_DATA="$mnist_dir" "$py" -m mnistdiff doctor
annotate 00-doctor doctor

# ----------------------------------------------------------------------------- 1. CUDA tests
stage 01-cuda-tests "$t_tests" env MNISTDIFF_DATA="$mnist_dir" "$py" -m pytest -v -rA -p no:cacheprovider tests/test_cuda.py -k "not extra1"
annotate 01-cuda-tests tests
stage 01b-cuda-compile-test "$t_compile" env MNISTDIFF_DATA="$mnist_dir" "$py" -m pytest -v -rA -p no:cacheprovider tests/test_cuda.py -k extra1
annotate 01b-cuda-compile-test tests

# ----------------------------------------------------------------------------- 2. sampling speed
sampling_end=$((SECONDS + t_sampling))
sampling() {  # NAME ROWS [ARGS]: one bench_sampling.py run inside the stage's shared limit
  local name=$1 rows=$2; shift 2
  if [ -z "$rows" ]; then skip "$name" "no rows (SAMPLING_* empty)"; return; fi
  # shellcheck disable=SC2086  # SAMPLING_ARGS is a list of options
  stage "$name" $((sampling_end - SECONDS)) "$py" scripts/bench_sampling.py --device "$device" \
    --rows "$rows" --student "$student" --json "$work/$name.json" "$@" $sampling_args
  annotate "$name" sampling
}
sampling 02-sampling "$sampling_rows"
sampling 02b-sampling-fashion "$sampling_fashion_rows" --checkpoint fashion-mnist
sampling 02c-sampling-more "$sampling_more_rows"
sampling 02d-sampling-compile "$sampling_compile_rows"

# ----------------------------------------------------------------------------- 3. training speed
bench_end=$((SECONDS + t_bench))
bench() {  # NAME CONFIG [OVERRIDES]: one bench_train.py run inside the stage's shared limit
  local name=$1 config=$2; shift 2
  capture=1 stage "$name" $((bench_end - SECONDS)) "$py" scripts/bench_train.py -c "$config" \
    --device "$device" --as-configured --steps "$bench_steps" --warmup "$bench_warmup" --json "$@"
  annotate "$name" bench
}
bench 03-train-bench "$bench_config"
bench 03b-train-bench-retrain "$train_config" "${sets[@]}"
if [ -n "$bench_batch" ]; then bench 03c-train-bench-b"$bench_batch" "$bench_config" -s "train.batch_size=$bench_batch"
else skip 03c-train-bench-batch "BENCH_BATCH empty"; fi
if [ "$bench_compile" = 1 ]; then bench 03d-train-bench-compile "$bench_config" -s train.compile=true
else skip 03d-train-bench-compile "BENCH_COMPILE=$bench_compile"; fi

# ----------------------------------------------------------------------------- 4. the retrain
# all the time left before the evaluation's share, at least T_TRAIN and at most T_TRAIN_MAX
t_retrain=$((total - SECONDS - 2 * grace - t_eval))
[ "$t_retrain" -gt "$t_train_max" ] && t_retrain=$t_train_max
[ "$t_retrain" -lt "$t_train" ] && t_retrain=$t_train
if [ -n "${TRAIN_STEPS:-}" ]; then
  steps=$TRAIN_STEPS steps_from="TRAIN_STEPS"
elif steps=$(digest steps 03b-train-bench-retrain "$t_retrain" "$train_overhead") && [ -n "$steps" ]; then
  steps_from="03b's images/s over ${t_retrain}s less ${train_overhead}s"
else
  steps=$fallback_steps steps_from="FALLBACK_STEPS (03b gave no images/s)"
fi
echo "[+${SECONDS}s] retrain: train.max_steps=$steps from $steps_from"
stage 04-fashion-train "$t_retrain" "$py" -m mnistdiff train -c "$train_config" -o "$work/fashion-run" \
  --device "$device" --data-dir "$fashion_dir" --no-progress "${sets[@]}" -s "train.max_steps=$steps"
for ((i = 0; i < ${#names[@]}; i++)); do
  [ "${names[i]}" = 04-fashion-train ] && notes[i]="${notes[i]}max_steps $steps from $steps_from; "
done
[ -f "$work/fashion-run/summary.json" ] && cp "$work/fashion-run/summary.json" "$work/04-fashion-train.json"
annotate 04-fashion-train train

# ----------------------------------------------------------------------------- 5. its evaluation
eval_args=(--n "$eval_n" --data-dir "$fashion_dir" --device "$device" -o "$work/05-fashion-n$eval_n.json")
[ -n "$eval_batch" ] && eval_args+=(--batch-size "$eval_batch")
[ -n "${DATASET:-}" ] && eval_args+=(--dataset "$DATASET")
if [ -f "$work/fashion-run/checkpoints/last.pt" ]; then
  stage "05-fashion-n$eval_n" "$t_eval" "$py" -m mnistdiff evaluate -k "$work/fashion-run" "${eval_args[@]}"
  annotate "05-fashion-n$eval_n" eval
else
  skip "05-fashion-n$eval_n" "no checkpoint from 04-fashion-train"
fi

write_summary true; pack
echo "[+${SECONDS}s] done: $out (summary.txt, summary.json, results.tar.gz); work files in $work"
cat "$out/summary.txt"

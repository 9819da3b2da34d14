#!/usr/bin/env bash
# Every GPU check in one prepared script, for a GPU machine lent for ~15 minutes (issue 10):
#
#   bash scripts/gpu_check.sh [OUT]        # OUT defaults to $OUT, else gpu-check/
#
# 1. the device, torch and the CUDA-only tests (tests/test_cuda.py: AMP and compile training,
#    GPU sampling against the CPU, distillation on CUDA), plus the pipeline fast-path tests;
# 2. the sampling benchmark on CUDA (seed DDPM-500 in full, the bundled model, its 10-step
#    setting, the guidance interval, compile, and the distilled student when one is given);
# 3. 10,000 digits from the teacher's defaults and from the student, timed end to end;
# 4. a short training (mnist.yaml, bf16 + compile + channels_last) and a short distillation,
#    for throughput; 5. evaluate of the student at n = 10,000.
# Each stage has its own time limit so one hang cannot eat the budget; logs and JSON go to OUT.
# It needs the MNIST IDX files ($MNISTDIFF_DATA, or ../shared/data/mnist beside the repo).
set -uo pipefail
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export MNISTDIFF_DATA=${MNISTDIFF_DATA:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/mnist}
student=${STUDENT:-mnist-fast}
py=${PYTHON:-python}
stage() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"
          local t0=$SECONDS; timeout "$limit" "$@" > "$out/$name.log" 2>&1; local rc=$?
          echo "   rc=$rc in $((SECONDS - t0))s"; tail -n 15 "$out/$name.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
$py -c "import torch, mnistdiff; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'mnistdiff', mnistdiff.__version__)" | tee -a "$out/device.txt"

stage tests 180 $py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_pipeline.py
stage bench 240 $py scripts/bench_sampling.py --device cuda --student "$student" \
    --json "$out/bench-cuda.json"
stage digits10k 120 $py - "$student" <<'EOF'
import sys, time, torch, mnistdiff
for name in ("mnist", sys.argv[1]):
    pipe = mnistdiff.load(name, device="cuda")
    pipe.sample(range(10), 100, batch_size=1000)  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize(); t = time.perf_counter()
    out = pipe.sample(range(10), 1000, batch_size=10000)
    torch.cuda.synchronize()
    print(f"{name}: 10,000 digits in {time.perf_counter() - t:.2f} s, NFE {out.nfe}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
EOF
stage train 150 $py -m mnistdiff train -c configs/mnist.yaml -o "$out/train" --no-progress \
    -s train.max_steps=300 -s train.log_every=100 -s train.sample_every=0
stage distill 120 $py -m mnistdiff distill --teacher mnist --steps 4 -o "$out/distill" \
    --no-progress -s train.max_steps=200 -s train.batch_size=256 -s train.sample_every=0
stage evaluate 150 $py -m mnistdiff evaluate -k "$student" --n 10000 -o "$out/student-n10000.json"
echo "done: $out"

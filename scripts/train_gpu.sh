#!/usr/bin/env bash
# Train mnistdiff on a GPU box, from a shell.
#
#   scripts/train_gpu.sh                       # one GPU, configs/mnist.yaml, into runs/mnist-gpu
#   GPUS=4 scripts/train_gpu.sh                # 4 GPUs of this machine (DistributedDataParallel)
#   RUN=runs/fashion CONFIG=configs/fashion.yaml scripts/train_gpu.sh -s train.epochs=80
#
# Extra arguments go to `mnistdiff train`: -s KEY=VALUE overrides, --data-dir DIR (or set
# $MNISTDIFF_DATA) when the IDX files are not to be downloaded, --no-progress for log files.
#
# Run it again with the same RUN and it resumes from $RUN/checkpoints/last.pt with the run's
# stored config, exactly where it stopped. Ctrl-C (or SIGTERM from a job scheduler) finishes the
# current step, writes a checkpoint and exits, so a preempted job just runs this script again.
#
# With N GPUs, train.batch_size stays the *global* batch (each GPU gets 1/N of it): the same
# config trains the same model, about N times faster. Only rank 0 prints and writes files.
#
# Afterwards: $RUN/summary.json, $RUN/loss.png, $RUN/samples/, and
#   mnistdiff sample --checkpoint "$RUN" --digits 0,1,2 --n 16 -o digits.png
set -euo pipefail

CONFIG=${CONFIG:-configs/mnist.yaml}
RUN=${RUN:-runs/mnist-gpu}
GPUS=${GPUS:-1}
PYTHON=${PYTHON:-python}

if [[ -f "$RUN/checkpoints/last.pt" ]]; then
    echo "resuming $RUN"
    args=(--resume "$RUN")
else
    args=(--config "$CONFIG" --out "$RUN")
fi

if [[ "$GPUS" -gt 1 ]]; then
    # One process per GPU; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK, which mnistdiff reads.
    # --standalone: this machine only, rendezvous on a free local port.
    exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" \
        -m mnistdiff train "${args[@]}" "$@"
fi
exec "$PYTHON" -m mnistdiff train --device cuda "${args[@]}" "$@"

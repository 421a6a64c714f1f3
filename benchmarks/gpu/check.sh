#!/usr/bin/env bash
# The GPU path, proved in at most 8 minutes on one GPU (run from anywhere; uses the repo's venv):
#
#   benchmarks/gpu/check.sh          # on a machine with one GPU
#   benchmarks/gpu/check.sh --cpu    # the CPU half (tiny preset): what the test suite runs
#
# (a) trains the openseek-small preset through megatron-core's GPTModel on the demo data for
#     $CHECK_STEPS steps (default 300): the loss must fall; prints tokens/s and MFU from the
#     trainer's own metrics endpoint. --cpu: the tiny preset through the PyTorch GPT.
# (b) the tiny preset for 20 steps in fp32 on the GPU and on the CPU, same data and seed (the
#     PyTorch GPT on both, so that the same weights are compared): every step's loss within
#     PARITY_TOLERANCE (5e-3, in gpu_check.py, with the reasoning). --cpu: the CPU half only.
# (c) the trainer under `datamix launch` with 2 processes on the one GPU (gloo, since NCCL needs
#     a GPU per process) if 8 GiB are free, else it says so. --cpu: 2 CPU processes.
#
# Each step has its own time limit (a: 300 s, b: 100 s, c: 80 s: 480 s in all); the exit code is
# the number of failed steps. Scratch files go to $CHECK_WORK (default: a new temporary folder).
set -euo pipefail

mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then
  mode=cpu
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--cpu]" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
steps="${CHECK_STEPS:-300}"
two_process_steps="${CHECK_TWO_PROCESS_STEPS:-20}"
work="${CHECK_WORK:-$(mktemp -d -t datamix-gpu-check.XXXXXX)}"
mkdir -p "$work"
cd "$repo"

flags=(--work "$work" --steps "$steps" --two-process-steps "$two_process_steps")
if [[ "$mode" == cpu ]]; then
  flags+=(--cpu)
  export CUDA_VISIBLE_DEVICES=""
else
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU here (nvidia-smi finds none); run with --cpu for the CPU half" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  "$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
fi
echo "mode: $mode; scratch: $work"

failed=0
run_step() {  # run_step NAME SECONDS: one step of gpu_check.py under its time limit
  local name=$1 limit=$2 started=$SECONDS
  echo "== $name (limit ${limit}s)"
  if timeout --kill-after=10 "$limit" "$python" benchmarks/gpu/gpu_check.py "$name" "${flags[@]}"; then
    echo "   $name passed in $((SECONDS - started))s"
  else
    echo "   $name FAILED (exit $?) after $((SECONDS - started))s; logs in $work"
    failed=$((failed + 1))
  fi
}

run_step train 300
run_step parity 100
run_step two-processes 80
echo "== $((3 - failed)) of 3 steps passed in ${SECONDS}s"
exit "$failed"

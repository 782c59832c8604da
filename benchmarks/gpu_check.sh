#!/usr/bin/env bash
# The GPU check: run this first whenever a GPU is available (docs/scaling.md, ../shared/GPU.md).
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine: about 8 minutes at most
#   bash benchmarks/gpu_check.sh --dry-run  # every stage on the CPU with tiny budgets (CI: .ci/run)
#
# Stages, each under its own time limit (generous in the dry run: a busy CI machine is slow to import torch) (a stage that runs out is reported as timed out, the rest go on):
#   tests      the test suite (not the slow tests) with CUDA: device-independent tests run on cpu and cuda
#   speed      benchmarks/speed.py on CUDA: pyro-vae (a) against hand-written PyTorch (b) and Pyro's loop (c)
#   engine     the captured loss and the CUDA-graph step against the eager loss: ms/step and equal losses
#   quality    benchmarks/time_to_quality.py: time to a test ELBO of -100 on MNIST
#   precision  bf16 (autocast networks, ELBO in fp32) against fp32: test ELBO and s/epoch
#   cli        pyro-vae fit --precision bf16 on the GPU; --devices 2 on the CPU (gloo); a refused --devices
# Results go to $OUT/gpu_check (else benchmarks/results/gpu_check); the report replaces the "GPU check"
# section of docs/benchmarks.md (a dry run writes a copy, $RESULTS/benchmarks.md, and leaves docs/ alone).
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
# the GPU machine (../shared/GPU.md): wheels in .whl/, data in .gpu-data/
if [ -d .whl ] && ! "$PY" -c "import pyro" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu-data ] && [ -z "${PYRO_VAE_DATA:-}" ] && export PYRO_VAE_DATA=$PWD/.gpu-data
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
RESULTS=${OUT:-benchmarks/results}/gpu_check
[ $DRY = 1 ] && RESULTS=${OUT:-${TMPDIR:-/tmp}}/gpu_check_dry_run
rm -rf "$RESULTS" && mkdir -p "$RESULTS"
: > "$RESULTS/stages.tsv"

stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, log to $RESULTS/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$RESULTS/stages.tsv"
    tail -n 3 "$RESULTS/$name.log"
    echo "== $name: exit code $rc"
}

cli_stage() {
    local tmp
    tmp=$(mktemp -d)
    if [ $DRY = 1 ]; then
        "$PY" cli.py fit --dataset digits --hidden 32 --z-dim 4 --epochs 1 --device cpu --devices 2 --out "$tmp/ddp" || return 1
    else
        "$PY" cli.py fit --dataset mnist --epochs 1 --device cuda --precision bf16 --out "$tmp/bf16" || return 1
        "$PY" cli.py fit --dataset digits --epochs 2 --device cpu --devices 2 --out "$tmp/ddp" || return 1
        echo "expected refusal:"
        "$PY" cli.py fit --dataset digits --epochs 1 --device cuda --devices 64 --out "$tmp/no"; [ $? = 2 ] || return 1
    fi
    rm -rf "$tmp"
}

export -f cli_stage  # timeout runs programs, not shell functions: run it in a child bash
export DRY PY
"$PY" benchmarks/gpu_check.py environment --results "$RESULTS" > /dev/null
if [ $DRY = 1 ]; then
    stage tests 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/speed/test_step.py tests/speed/test_capture.py -k "switch or capture"
    stage speed 300 "$PY" benchmarks/speed.py --cpu-only --dataset digits --archs relu400 --batch-sizes 128 \
        --loops a,b,c --steps 4 --block 2 --warmup 1 --no-memory --out "$RESULTS"
    stage engine 180 "$PY" benchmarks/gpu_check.py engine --results "$RESULTS" --dataset digits --device cpu \
        --steps 5 --warmup 1 --compare-steps 3
    stage quality 180 "$PY" benchmarks/time_to_quality.py --dataset digits --device cpu --target -40 \
        --max-epochs 2 --max-minutes 0.5 --out "$RESULTS"
    stage precision 180 "$PY" benchmarks/gpu_check.py precision --results "$RESULTS" --dataset digits --device cpu --epochs 1
    stage cli 300 bash -c cli_stage
    "$PY" benchmarks/gpu_check.py report --dry-run --results "$RESULTS" --docs "$RESULTS/benchmarks.md"
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: run with --dry-run')" || exit 1
    stage tests 160 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests
    stage speed 90 "$PY" benchmarks/speed.py --cuda-only --archs relu400 --batch-sizes 128,1024 --loops a,b,c \
        --steps 40 --warmup 10 --experimental-cuda-graph --no-memory --out "$RESULTS"
    stage engine 30 "$PY" benchmarks/gpu_check.py engine --results "$RESULTS" --device cuda
    stage quality 85 "$PY" benchmarks/time_to_quality.py --device cuda --target -100 --max-minutes 1.2 --out "$RESULTS"
    stage precision 45 "$PY" benchmarks/gpu_check.py precision --results "$RESULTS" --device cuda --epochs 3
    stage cli 60 bash -c cli_stage
    "$PY" benchmarks/gpu_check.py report --results "$RESULTS"
    cp docs/benchmarks.md "$RESULTS/benchmarks.md"  # it comes back with $OUT
fi
echo "results: $RESULTS"
! grep -qv $'\t0\t' "$RESULTS/stages.tsv"  # exit 1 if any stage failed

#!/usr/bin/env bash
# Issue 24's measurements in one go, on a quiet machine: the speed table with NumPyro, pythae and
# pyro-vae's variants (--compile, --precision bf16, both, fast_bernoulli, one thread), the bf16-against-fp32 table,
# the phase profile against NumPyro's jitted pieces, and a time-to-quality row with start-up counted.
#
#   bash benchmarks/issue24.sh                 # waits until the 1-minute load average is below $QUIET
#   SIZE=smallest bash benchmarks/issue24.sh   # relu400, batch 128 only (a few minutes)
#
# Environment: DATA (the folder with MNIST/, default $PYRO_VAE_DATA or /work/shared/data), OUT (results
# folder, default benchmarks/results/issue24-<date>), QUIET (load threshold, 2.5), UNTIL (HH:MM UTC: stop
# waiting then and measure anyway, the load written beside the results; default: wait forever),
# STOP (HH:MM UTC: a stage not started by then is skipped), PYTHON (default python), THREADS (torch threads, 2).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DATA=${DATA:-${PYRO_VAE_DATA:-/work/shared/data}}
OUT=${OUT:-benchmarks/results/issue24-$(date -u +%Y-%m-%d-%H%M)}
QUIET=${QUIET:-2.5}
THREADS=${THREADS:-2}
SIZE=${SIZE:-full}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] load $(cut -d' ' -f1-3 /proc/loadavg): $*" | tee -a "$OUT/log.txt"; }

# quiet: the 1-minute load average below $QUIET at two polls a minute apart (a lull between other
# jobs is not quiet). Checked once before the first stage (every script logs the load before and after
# itself); past $UNTIL the run starts anyway, marked BUSY.
busy=0
wait_quiet() {
  local calm=0
  while true; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" -v q="$QUIET" 'BEGIN{exit !(l < q)}'; then calm=$((calm + 1)); else calm=0; fi
    if [ "$calm" -ge 2 ]; then log "quiet (< $QUIET twice, a minute apart)"; return; fi
    if [ -n "${UNTIL:-}" ] && [[ ! "$(date -u +%H:%M)" < "$UNTIL" ]]; then
      log "not quiet by $UNTIL: measuring anyway (the numbers are not trustworthy)"
      echo "busy: load $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%H:%M)" >> "$OUT/BUSY"
      busy=1; export OMP_WAIT_POLICY=PASSIVE  # spinning OpenMP threads collapse under contention
      return
    fi
    sleep 60
  done
}

late() {  # true (and logged) when past $STOP: the stage is skipped
  if [ -n "${STOP:-}" ] && [[ ! "$(date -u +%H:%M)" < "$STOP" ]]; then log "past $STOP: skipping $1"; return 0; fi
  return 1
}

wait_quiet
[ "$busy" = 1 ] && SIZE=smallest  # a busy machine: the smallest version, its numbers marked BUSY
if [ "$SIZE" = smallest ]; then
  archs=relu400; batches=128; seeds=0; epochs=2
else
  archs=relu400,tanh200x2; batches=128,1024; seeds=0,1; epochs=2
fi

log "speed.py"
$PYTHON benchmarks/speed.py --data-dir "$DATA" --threads "$THREADS" --archs $archs --batch-sizes $batches \
  --loops a,b,d,e,ac,ah,ach,af,a1 --steps 40 --block 5 --warmup 10 --no-memory --out "$OUT" 2>&1 | tee -a "$OUT/log.txt"
late bf16_cpu.py || { log "bf16_cpu.py"
$PYTHON benchmarks/bf16_cpu.py --data-dir "$DATA" --threads "$THREADS" --archs $archs --batch-sizes $batches \
  --seeds $seeds --epochs $epochs --out "$OUT" 2>&1 | tee -a "$OUT/log.txt"; }
late profile_step.py || { log "profile_step.py --numpyro --phases-only"
$PYTHON benchmarks/profile_step.py --data-dir "$DATA" --threads "$THREADS" --numpyro --phases-only --rounds 20 \
  --out "$OUT" 2>&1 | tee -a "$OUT/log.txt"; }
late time_to_quality.py || { log "time_to_quality.py"
$PYTHON benchmarks/time_to_quality.py --data-dir "$DATA" --threads "$THREADS" --loops a,ac,ah,af,d --targets=-110 \
  --milestones=-130,-120 --max-epochs 5 --max-minutes 4 --out "$OUT" 2>&1 | tee -a "$OUT/log.txt"; }
log "done"

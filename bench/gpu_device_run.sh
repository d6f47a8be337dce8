#!/usr/bin/env bash
# The whole GPU check as it runs on a lent GPU machine (see docs/gpu.md): run from the repo root
# there, with the stripped, gzipped CUDA build carried as .cuda/sqdf.gz (ignored by git via
# .git/info/exclude). Device time is scarce, so every step has its own time limit and
# writes under $OUT as it goes: a step cut short still leaves its log and memory trace.
#
#   STEPS=2 COLLECT_MICRO=8 TINY=60 PHASES="64:1,2,4,8:400 32:1,2:150" bench/gpu_device_run.sh
#
# TINY: seconds for a 2-epoch run of the tiny configuration with evaluation (unset: skipped).
# PHASES: LATENT:MICRO_LIST:SECONDS for each bench/sd15_gpu.sh run, in order (SD-1.5's
# networks at LATENTxLATENT latents, one update per micro-batch size).
# STEPS, COLLECT_MICRO and BATCH pass on to bench/sd15_gpu.sh (without STEPS=2 the
# sampling before the updates is 50 steps, which outlasts a phase at 64x64).
set -uo pipefail
B=/tmp/sqdfbin; mkdir -p $B
gunzip -c .cuda/sqdf.gz > $B/sqdf && chmod +x $B/sqdf
L=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  d=$(find /opt/torch/.venv /usr/local /usr/lib -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
  [ -n "$d" ] && L="$L:$d"
done
export LD_LIBRARY_PATH=${L#:}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd $B/sqdf | grep -E "not found|cublas|nvrtc|curand|cudart"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if [ -n "${TINY:-}" ]; then
  $B/sqdf random-weights /tmp/tiny --size tiny --dtype f32 >/dev/null
  ( time timeout "$TINY" $B/sqdf --quiet run scripts/sd15_aesthetic.lua --set weights=/tmp/tiny \
      --set epochs=2 --set batch=4 --set micro_batch=2 --set eval_per_prompt=2 --out /tmp/tinyrun \
      --no-watch >/dev/null ) 2>&1 | tail -5
  cp /tmp/tinyrun/metrics.jsonl /tmp/tinyrun/eval.json "$OUT/" 2>/dev/null
  cat /tmp/tinyrun/metrics.jsonl
fi
# The weights are written once; sd15_gpu.sh's LATENT rewrites the UNet's sample_size in place.
for phase in ${PHASES:-64:1,2,4,8:400}; do
  IFS=: read -r latent micro secs <<<"$phase"
  echo "== latents ${latent}x${latent}, micro-batches $micro, at most $secs s"
  LATENT=$latent timeout "$secs" bench/sd15_gpu.sh $B/sqdf "$OUT/sd15-$latent" "$micro" 2>&1 | tail -25
done

#!/usr/bin/env bash
# The whole GPU check as it ran on the lent H200 (see docs/CUDA.md): run from the repo root on
# the device machine with the stripped, gzipped CUDA build carried as .cuda/sqdf.gz (ignored by
# git via .git/info/exclude). SKIP_TINY=1 skips the tiny smoke run; LATENT and MICRO pass on
# to bench/sd15_gpu.sh.
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
# 1. tiny smoke test on the GPU (bf16 by default there), 2 epochs
[ -z "${SKIP_TINY:-}" ] && $B/sqdf random-weights /tmp/tiny --size tiny --dtype f32 >/dev/null
[ -z "${SKIP_TINY:-}" ] && ( time $B/sqdf --quiet run scripts/sd15_aesthetic.lua --set weights=/tmp/tiny --set epochs=2 \
    --set batch=4 --set micro_batch=2 --set eval_per_prompt=2 --out /tmp/tinyrun --no-watch \
    > /dev/null ) 2>&1 | tail -5
[ -z "${SKIP_TINY:-}" ] && cp /tmp/tinyrun/metrics.jsonl $OUT/tiny_metrics.jsonl; cp /tmp/tinyrun/eval.json $OUT/tiny_eval.json
[ -z "${SKIP_TINY:-}" ] && cat /tmp/tinyrun/metrics.jsonl && grep -A8 '"after"' /tmp/tinyrun/eval.json
# 2. SD-1.5 size, random weights: micro-batch 1, 2, 4, 8
bench/sd15_gpu.sh $B/sqdf $OUT/sd15 "${MICRO:-1,2,4,8}" 2>&1 | tail -40

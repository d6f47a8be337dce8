#!/usr/bin/env bash
# One SQDF update at SD-1.5 size on a GPU, per micro-batch size, with random weights:
# seconds per update of 64 states (BATCH sets another count) and the GPU memory high-water
# mark of each update.
#
#   bench/sd15_gpu.sh SQDF_BINARY OUT_DIR [MICRO_LIST]
#
# The binary is a `cargo build --release --features cuda` build (docs/gpu.md). Memory is
# read from nvidia-smi every 50 ms and matched to each update's start and end times, which
# `sqdf bench` prints; it includes the CUDA context and what the process holds besides.
# memory.csv's third column, the GPU's utilisation (%), tells a stall on the host from a
# long kernel.
set -euo pipefail
SQDF=$1
OUT=$2
MICRO=${3:-1,2,4,8}
W=${WEIGHTS:-/tmp/sd15-random}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpu.txt"
if [ ! -d "$W/unet" ]; then
  /usr/bin/time -f "random weights: %e s" "$SQDF" random-weights "$W" --size sd15 --dtype f16
fi
# LATENT=32 runs SD-1.5's networks on 32x32 latents (256x256 images) instead of 64x64.
if [ -n "${LATENT:-}" ]; then
  python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['sample_size']=int(sys.argv[2]); json.dump(c,open(p,'w'))" \
    "$W/unet/config.json" "$LATENT"
fi
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 50 \
  >"$OUT/memory.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
# Sampling (and the smoke test) at COLLECT_MICRO trajectories at a time. STEPS shortens
# the sampling before the updates (an update's cost does not depend on the step count;
# 64 trajectories x 50 steps at 64x64 latents outlast a 10-minute device call).
"$SQDF" --quiet bench scripts/sd15_aesthetic.lua --set weights="$W" --batch "${BATCH:-64}" \
  --set micro_batch="${COLLECT_MICRO:-1}" --set steps="${STEPS:-50}" --repeats 0 --micro "$MICRO" >"$OUT/bench.json" 2> >(tee "$OUT/bench.log" >&2)
kill $SMI
python3 - "$OUT" <<'PY'
import json, sys, datetime
out = sys.argv[1]
bench = json.load(open(f"{out}/bench.json"))
rows = []
for line in open(f"{out}/memory.csv"):
    ts, mib = [x.strip() for x in line.split(",")][:2]
    t = datetime.datetime.strptime(ts, "%Y/%m/%d %H:%M:%S.%f").timestamp()
    rows.append((t, float(mib)))
print(f"device {bench['device']}, build {bench['build_s']:.1f} s, "
      f"sampling {bench['batch']} x {bench['steps']} steps {bench['sampling']['mean_s']:.1f} s")
print(f"| micro-batch | update of {bench['batch']} (s) | peak GPU memory (MiB) |")
print("|---:|---:|---:|")
for w, u in zip(bench["update_windows"], bench["updates"]):
    peak = max((m for t, m in rows if w["start_unix"] - 0.1 <= t <= w["end_unix"] + 0.1), default=float("nan"))
    print(f"| {w['micro_batch']} | {u['update']['mean_s']:.2f} | {peak:,.0f} |")
print(f"peak over the whole process: {max(m for _, m in rows):,.0f} MiB")
PY

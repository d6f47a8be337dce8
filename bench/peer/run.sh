#!/usr/bin/env bash
# The PyTorch peer benchmark: sqdf's digits workload against the same networks, weights and
# work in PyTorch (bench/peer/README.md). Checks parity first and stops if it fails, then
# times sqdf and PyTorch in alternating processes (A B A B ..., each warmed up first) and
# prints one Markdown table.
#
#   bench/peer/run.sh
#
# PEER_PYTHON  the Python that has requirements.txt installed (default python3)
# PAIRS        sqdf/PyTorch process pairs (default 3)
# THREADS      threads of both (default 2: RAYON_NUM_THREADS, OMP_NUM_THREADS, torch.set_num_threads)
# OUT          folder of the dump, the timing files and the logs (default: a new temporary one)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PEER_PYTHON:-python3}
PAIRS=${PAIRS:-3}
THREADS=${THREADS:-2}
OUT=${OUT:-$(mktemp -d -t sqdf-peer-XXXXXX)}
mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
log() { echo "run.sh: $*" >&2; }

"$PY" -c "import torch, diffusers, peft, safetensors, numpy" 2>/dev/null || {
  log "$PY lacks the peer's packages: see bench/peer/README.md (set PEER_PYTHON)"
  exit 1
}
cargo build --release --quiet
TARGET=$(cargo metadata --no-deps --format-version 1 |
  "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
SQDF=$TARGET/release/sqdf
PEER=(bench/peer/peer.py --threads "$THREADS")

log "parity (details in $OUT/parity.md)"
"$SQDF" --quiet bench-peer --dump "$OUT" >/dev/null 2>>"$OUT/sqdf.log"
if ! "$PY" "${PEER[@]}" parity "$OUT" >"$OUT/parity.md" 2>>"$OUT/torch.log"; then
  cat "$OUT/parity.md"
  log "parity failed: nothing timed"
  exit 1
fi
tail -n 1 "$OUT/parity.md" >&2

"$SQDF" --quiet bench-peer --peak --json "$OUT/peak.json"
for k in $(seq 1 "$PAIRS"); do
  log "pair $k of $PAIRS: sqdf"
  "$SQDF" --quiet bench-peer --time --json "$OUT/sqdf-$k.json" 2>>"$OUT/sqdf.log"
  log "pair $k of $PAIRS: torch"
  # The first PyTorch process also counts FLOPs, after its timed round.
  flops=()
  [ "$k" = 1 ] && flops=(--flops)
  "$PY" "${PEER[@]}" time --json "$OUT/torch-$k.json" --config "$OUT/parity.safetensors" \
    "${flops[@]}" 2>>"$OUT/torch.log"
done

"$PY" "${PEER[@]}" table --peak "$OUT/peak.json" \
  --sqdf $(seq -f "$OUT/sqdf-%g.json" 1 "$PAIRS") \
  --torch $(seq -f "$OUT/torch-%g.json" 1 "$PAIRS") | tee "$OUT/table.md"
log "files in $OUT"

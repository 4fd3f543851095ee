#!/usr/bin/env bash
# The CUDA figures: every rule's throughput and memory on the JSB and SHD networks (SNU and ALIF) and the
# SHD exact traces against their bounds, each table a file in OUT (default results/), named *_cuda.md.
#   bash benchmarks/bench_cuda.sh [OUT]      # on a machine with a CUDA GPU and .venv (or torch) set up
# The eager engine runs on CUDA (the fused kernels are CPU code). Each command has its own time limit so that
# one slow table cannot take the others with it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
  echo "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader); $($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'); $(date -u +%F)"
} > "$OUT/cuda_machine.txt"
run() {  # limit, file, command...
  local limit=$1 file=$2; shift 2
  { head -1 "$OUT/cuda_machine.txt"; echo; timeout "$limit" "$PY" "$@"; } > "$OUT/$file.tmp" && mv "$OUT/$file.tmp" "$OUT/$file"
  cat "$OUT/$file" 2>/dev/null || cat "$OUT/$file.tmp"
}
run 140 bench_rules_jsb_cuda.md benchmarks/bench_rules.py --device cuda --engine eager --lengths 128 1024 --batch 32 --repeats 3
run 100 bench_rules_jsb_b256_cuda.md benchmarks/bench_rules.py --device cuda --engine eager --lengths 128 1024 --batch 256 --repeats 3
run 90 bench_rules_alif_cuda.md benchmarks/bench_rules.py --device cuda --engine eager --neuron alif --lengths 128 1024 --batch 32 --repeats 3
run 90 bench_rules_shd_cuda.md benchmarks/bench_rules.py --device cuda --engine eager --network shd --lengths 100 --batch 32 --repeats 3
run 80 bench_shd_traces_cuda.md benchmarks/bench_shd_traces.py --device cuda --batch 32 --repeats 5
run 50 bench_shd_traces_b256_cuda.md benchmarks/bench_shd_traces.py --device cuda --batch 256 --repeats 5

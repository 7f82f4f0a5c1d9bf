#!/usr/bin/env bash
# One prepared GPU session (device tool): correctness checks + engine overhead on CUDA. Writes JSON to $OUT.
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_check.py | tee "$OUT/gpu_check.json"
python3 benchmarks/gpu_sync_check.py | tee "$OUT/gpu_sync_check.json"
python3 benchmarks/engine_overhead.py --device cuda --batch-size 1024 --rounds 2 > "$OUT/engine_overhead_cuda.json" 2>&1
tail -60 "$OUT/engine_overhead_cuda.json"
python3 benchmarks/engine_overhead.py --device cuda --batch-size 1024 --rounds 2 --amp --channels-last > "$OUT/engine_overhead_cuda_amp.json" 2>&1
tail -60 "$OUT/engine_overhead_cuda_amp.json"

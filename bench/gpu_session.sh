#!/usr/bin/env bash
# Everything a lent GPU session checks, in one go (~8-10 min on an H200): the CUDA-only decoder tests, the
# whole captionlab-vs-plain comparison (bench.run_all) on LLaVA-1.5-7B and LLaVA-1.6-7B shapes, then where
# LLaVA-1.5 captioning time goes (bench.prefill_profile).
#
#   bash bench/gpu_session.sh                 # writes into $OUT (or bench/out)
#
# The lent machines have no network and their own python (torch, accelerate, nvidia-ml-py, pytest); the
# pinned transformers/peft travel as wheels in .whl/ when present (see bench/RESULTS.md for how they were made).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}
mkdir -p "$out"
source bench/gpu_env.sh
timeout 120 python3 -m pytest -q tests/test_decoding.py 2>&1 | tail -15 | tee "$out/cuda_tests.txt"
python3 -m bench.run_all --device cuda --keep-going --out "$out" "$@" 2>&1 | tee "$out/bench.log"
python3 -m bench.prefill_profile --device cuda --model llava-1.5-7b --batch 64 --out "$out" 2>&1 | tee "$out/profile.log"

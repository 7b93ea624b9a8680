#!/usr/bin/env bash
# The performance follow-up on a lent GPU, in one go (~6-7 min on an H200), most wanted first, each step time-boxed
# so one slow step cannot take the others' time:
#   0. the CUDA-only tests: DoRA's half-precision products, the decoder's CUDA-graph steps (eager and compiled layers)
#   1. LLaVA-1.5-7B: LoRA and DoRA training rows + every captioning row (plain, decoder, compiled prefill,
#      masked against exact-length decoding steps, steps through compiled layers)
#   2. where LLaVA-1.5 captioning time goes (bench.prefill_profile, with one decoding step of each kind: masked,
#      exact-length, exact-length through compiled layers)
#   3. LLaVA-1.6-7B captioning rows
#   4. where DoRA's extra step time goes against LoRA (bench.train_profile; DoRA's target is met, so it goes last)
# The time boxes add up to 750 s, more than a lent machine's 600 s per command: the last step is the one a slow run
# loses (results are packed after every step, so what ran comes back).
#
#   bash bench/gpu_session_perf.sh            # writes into $OUT (or bench/out)
#
# Issue #21's families (never run on a GPU yet), one ready command of their own, each model time-boxed (510 s in all,
# under one command's 600 s; a model cut off keeps the sections it finished): LoRA training rows at each model's stated
# rank, then the captioning rows; one 480 x 640 image each:
#   FAMILIES=1 bash bench/gpu_session_perf.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/out}/r  # everything here, packed after each step into ../results.tgz (the lent machine returns few files)
mkdir -p "$out"
source bench/gpu_env.sh
step() {  # seconds, log name, command...
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1; echo "=== $name exit $? ($(date +%T))"
  grep -v "Warning\|warn(" "$out/$name.log" | tail -25
  tar czf "$out/../results.tgz" -C "$out" .
}
if [ -n "${FAMILIES:-}" ]; then  # the 7B models first: the rows most wanted
  step 120 qwen2.5-vl-7b python3 -m bench.run_all --device cuda --keep-going --models qwen2.5-vl-7b \
    --works train,caption --strategies lora --out "$out" --stem qwen2.5-vl-7b
  step 120 llava-onevision-7b python3 -m bench.run_all --device cuda --keep-going --models llava-onevision-7b \
    --works train,caption --strategies lora --out "$out" --stem llava-onevision-7b
  step 90 smolvlm-2.2b python3 -m bench.run_all --device cuda --keep-going --models smolvlm-2.2b \
    --works train,caption --strategies lora --out "$out" --stem smolvlm-2.2b
  step 60 qwen2.5-vl-3b python3 -m bench.run_all --device cuda --keep-going --models qwen2.5-vl-3b \
    --works train,caption --strategies lora --out "$out" --stem qwen2.5-vl-3b
  step 60 smolvlm-256m python3 -m bench.run_all --device cuda --keep-going --models smolvlm-256m \
    --works train,caption --strategies lora --out "$out" --stem smolvlm-256m
  step 60 llava-onevision-0.5b python3 -m bench.run_all --device cuda --keep-going --models llava-onevision-0.5b \
    --works train,caption --strategies lora --out "$out" --stem llava-onevision-0.5b
  exit 0
fi
step 90 dora_cuda_test python3 -m pytest -q tests/test_dora_fast.py tests/test_decoding.py -k "half_precision or graph"
step 230 llava15 python3 -m bench.run_all --device cuda --keep-going --models llava-1.5-7b --works train,caption \
  --strategies lora,dora --out "$out" --stem llava15
step 200 prefill_profile python3 -m bench.prefill_profile --device cuda --model llava-1.5-7b --batch 64 --out "$out"
step 150 llava16 python3 -m bench.run_all --device cuda --keep-going --models llava-1.6-7b --works caption --out "$out" \
  --stem llava16
step 80 train_profile python3 -m bench.train_profile --device cuda --model llava-1.5-7b --strategies lora,dora --out "$out"

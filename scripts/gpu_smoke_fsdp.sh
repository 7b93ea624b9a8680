#!/usr/bin/env bash
# FSDP2 smoke test on one GPU, offline, well under a minute: the embedded tiny LLaVA (checkpoints/embedded/base),
# full fine-tuning with `distributed: fsdp` under `accelerate launch --use_fsdp --num_processes 1` (accelerate's
# own FSDP2 path: bf16 compute, fp32 master weights), on a small seeded embedded world. Then the run is resumed
# from its previous/ checkpoint (written mid-epoch by FSDP, full tensors gathered on rank 0) and the replayed
# steps must give the same losses. Prints the losses; exits non-zero on any failure.
#
#   bash scripts/gpu_smoke_fsdp.sh                 # CUDA (the default), python from $PYTHON or PATH
#   DEVICE=cpu bash scripts/gpu_smoke_fsdp.sh      # the same logic on the CPU (gloo; the trainer shards itself)
#   RESUME=0 bash scripts/gpu_smoke_fsdp.sh        # skip the resume (one launch)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
DEVICE=${DEVICE:-cuda}
RESUME=${RESUME:-1}   # RESUME=0: train only (one accelerate launch instead of two: ~20 s less)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fsdp-smoke.XXXXXX")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "work dir: $WORK  device: $DEVICE  python: $PYTHON"
begin=$(date +%s)

# a seeded small world and the run's config (12 train images -> 8 steps of 8 captions, checkpoints every 3 steps);
# no torch import here (each Python start with torch costs seconds): the trainer validates the config when it loads it
"$PYTHON" - "$WORK" "$DEVICE" <<'PY'
import sys
from pathlib import Path
import yaml
from captionlab.world import write_world

work, device = Path(sys.argv[1]), sys.argv[2]
world = write_world(work / "world", seed=0, scale=0.02)
(work / "run").mkdir()
config = dict(model="embedded", strategy="full", distributed="fsdp", device=device, dataset="coco",
              datasets_config=str(world), epochs=1, batch_size=8, micro_batch_size=4, lr_max=0.2, lr_min=0.01,
              momentum=0.9, max_grad_norm=1.0, max_train_images=12, max_val_images=4, checkpoint_every_steps=3, seed=0)
(work / "run" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
PY

launch() {
  "$PYTHON" -m accelerate.commands.launch --use_fsdp --fsdp_version 2 --num_processes 1 --num_machines 1 \
    --mixed_precision "$([ "$DEVICE" = cuda ] && echo bf16 || echo no)" --dynamo_backend no \
    -m train run --run-dir "$WORK/run" "$@" 2>&1 | tee -a "$WORK/log.txt" | grep -E "^\[|Error|error" || true
}
launch
cp "$WORK/run/metrics.jsonl" "$WORK/first.jsonl"
if [ "$RESUME" = 1 ]; then
  rm -rf "$WORK/run/last"   # as if last/ were lost: resume from previous/ (mid-epoch, momentum buffers included)
  launch --resume
fi
"$PYTHON" - "$WORK" "$DEVICE" "$RESUME" <<'PY'
import json, math, struct, sys
from importlib.metadata import version
from pathlib import Path

# no torch here either (seconds per start): versions from the package metadata, tensors from the safetensors headers
work, device, resume = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
print(*(f"{name} {version(name)}" for name in ("torch", "transformers", "accelerate", "peft")))


def tensor_shapes(path):
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}
log = (work / "log.txt").read_text()
rows = lambda path: [json.loads(line) for line in path.read_text().splitlines()]
first = [r for r in rows(work / "first.jsonl") if "loss" in r]
after = rows(work / "run" / "metrics.jsonl")[len(rows(work / "first.jsonl")):]
replayed = [r for r in after if "loss" in r]
status = json.loads((work / "run" / "status.json").read_text())
print("steps:    ", [r["step"] for r in first])
print("losses:   ", [round(r["loss"], 5) for r in first])
print("grad norm:", [round(r["grad_norm"], 4) for r in first])
print("replayed: ", {r["step"]: round(r["loss"], 5) for r in replayed})
fails = []
if device == "cuda" and "FSDP2 (accelerate)" not in log:
    fails.append("accelerate's FSDP2 path was not used (see log.txt)")
if status.get("state") != "finished":
    fails.append(f"run state {status.get('state')}: {status.get('message')}")
if len(first) != 8 or not all(math.isfinite(r["loss"]) for r in first):
    fails.append(f"expected 8 finite losses, got {[r['loss'] for r in first]}")
elif first[-1]["loss"] >= first[0]["loss"]:
    fails.append("the loss did not go down")
expected = {r["step"]: r["loss"] for r in first}
if resume and (not replayed or replayed[0]["step"] != 7):
    fails.append(f"resume should replay from step 7, replayed {[r['step'] for r in replayed]}")
for r in replayed:
    if not math.isclose(r["loss"], expected[r["step"]], rel_tol=2e-3):
        fails.append(f"step {r['step']}: resumed loss {r['loss']} != {expected[r['step']]}")
best = work / "run" / "best"
trainable, optimizer = tensor_shapes(best / "trainable.safetensors"), tensor_shapes(best / "optimizer.safetensors")
values = sum(math.prod(shape) for shape in trainable.values())
print(f"best/: {len(trainable)} full tensors ({values:,} values), {len(optimizer)} momentum buffers, "
      f"artifact files {sorted(p.name for p in (best / 'artifact').iterdir())}")
if not (best / "COMPLETE").exists() or len(optimizer) != len(trainable) or f"{values:,} trainable parameters" not in log:
    fails.append("best/ is not a complete checkpoint of every trainable parameter, whole (gathered)")
print("FAIL:\n  " + "\n  ".join(fails) if fails else "OK: FSDP smoke passed")
sys.exit(1 if fails else 0)
PY
echo "took $(( $(date +%s) - begin )) s"

# Sourced by the GPU session scripts (after `cd` to the repository root and setting $out): installs the pinned
# transformers/peft wheels from .whl/ when present (the lent machines have no network), sets the environment,
# and writes the card and versions to $out/gpu.txt.
# .whl/ is gitignored; fill it here (registry access) before a GPU run, and carry it (`carry: [".whl"]`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl transformers==5.23.0 peft==0.21.2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv
  python3 -c "import sys, torch, transformers, peft, accelerate; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
  python3 -c "import triton; print('triton', triton.__version__)" ; command -v gcc cc
} 2>&1 | tee "$out/gpu.txt"

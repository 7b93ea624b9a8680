"""Benchmarks: captionlab against the plain transformers + peft way, measured in one run on one device.

    python -m bench.run_all --device cuda --out bench/out        # the GPU comparison (LLaVA-1.5/1.6-7B shapes)
    python -m bench.run_all --device cpu --out /tmp/bench         # CPU smoke run on tiny models

See bench/RESULTS.md for what was measured where.
"""

"""How long the Compare tab takes to caption one uploaded image with every shipped captioner (CPU).

    python -m bench.compare_latency [--repeats 5] [--threads 2]

Target (issue "Performance"): the seven captions of one image within one second on 2 cores with the
embedded models. This is a benchmark, not a test: it prints the median and the per-captioner split.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from captionlab.service.compare import get_pool
    from captionlab.service.gallery import GALLERY_FILE, read_gallery
    from captionlab.service.settings import embedded_settings

    torch.set_num_threads(args.threads)
    settings = embedded_settings()
    gallery = read_gallery(settings.checkpoints / "gallery") if (settings.checkpoints / "gallery" / GALLERY_FILE).exists() else []
    if not gallery:
        print("no shipped gallery: build the embedded study first (python -m train zoo)")
        return 2
    from PIL import Image

    image = Image.open(gallery[0].path).convert("RGB")
    pool = get_pool(settings)
    pool.caption([image])  # loads the models once, as the app does on its first request
    totals, per_key = [], {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        captions, latency, errors = pool.caption([image])
        totals.append(time.perf_counter() - started)
        for key, ms in latency.items():
            per_key.setdefault(key, []).append(ms)
    print(f"captioners: {len(captions)} ({', '.join(captions)}); errors: {errors or 'none'}")
    print(f"one image, all captioners: median {statistics.median(totals) * 1000:.0f} ms "
          f"(min {min(totals) * 1000:.0f}, max {max(totals) * 1000:.0f}) over {args.repeats} runs, {args.threads} threads")
    for key, values in per_key.items():
        print(f"  {key:<16} {statistics.median(values):7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

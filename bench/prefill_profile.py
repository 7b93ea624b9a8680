"""Where captioning time goes: the prefill against the decoding steps, the prefill's kernel time by kind, the
matrix products' own rate, and what that rate allows at best.

Captioning a batch (`GreedyDecoder`, as `LlavaCaptioner` runs it) is one prefill over BOS + prompt + image
tokens and ~20 one-token decoding steps. This script measures, on one device, for one batch shape:

  timing      images/s of the prefill alone (1 new token) and of the whole caption (`--new-tokens`), each the
              fastest of `--repeats` calls (runs 3-4 took their mean: a difference of two means carries whatever
              else the machine did into it), eager and
              with the prefill through torch.compile'd layers (`compile_prefill`; compiling timed apart), with
              the decoder's default steps (exact-length on these unpadded batches; masked in runs 3-4)
  kernels     one prefill under torch.profiler: kernel time (CUDA; CPU op self time elsewhere) split into matrix
              products, attention and everything else, and the longest kernels
  matmul      the prefill's matrix-product FLOPs (counted from every nn.Linear call: 2 x rows x in x out) over
              their kernel time = the rate the products ran at; the same rate for one large square bf16 product
              run for a few seconds; and the ceiling: images/s if everything but the products (and the
              measured decoding steps) took no time
  power       on CUDA, mean board power and SM clock while the prefill runs (NVML samples every 20 ms)
  steps       one decoding step of each kind the decoder has (`captionlab/models/decoding.py`): masked (the whole
              preallocated cache under an additive mask, one CUDA graph), exact-length (the written cache, no
              mask, one CUDA graph per step length) and exact-length with its layers compiled (`compile_steps`):
              ms per step ((fastest caption - fastest prefill) / steps) and its kernel time by kind, the caption's kernels less the
              prefill's, per step, with the kernels the steps launch

    python -m bench.prefill_profile --device cuda --model llava-1.5-7b --batch 64 --out bench/out
    python -m bench.prefill_profile --device cpu --model tiny --batch 4       # the same on the CPU (tiny model)
"""

from __future__ import annotations

import re
import sys
import threading
import time

import torch

from bench.common import bench_parser, environment, free_memory, make_setup, synchronize, write_report

MATMUL = re.compile(r"gemm|cutlass|xmma|nvjet|cublas|matmul|aten::mm$|aten::addmm|aten::bmm|aten::linear|sm\d+_", re.I)
NOT_KERNELS = {"Command Buffer Full"}  # CUPTI's marker for the host waiting on a full launch queue: no GPU work
ATTENTION = re.compile(r"flash|fmha|attention|sdpa|efficient", re.I)


def kind_of(name: str) -> str:
    if ATTENTION.search(name):
        return "attention"
    return "matmul" if MATMUL.search(name) else "other"


class PowerSampler:
    """Mean board power (W) and SM clock (MHz) of one GPU between start() and stop(); empty off CUDA."""

    def __init__(self, device: torch.device):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            except Exception:  # noqa: BLE001 - no NVML: no power figures, said in the report
                self._handle = None

    def _run(self) -> None:
        while not self._stop.is_set():
            watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            clock = self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM)
            self.samples.append((watts, float(clock)))
            self._stop.wait(0.02)

    def __enter__(self):
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        watts, clocks = zip(*self.samples)
        return {"mean_w": sum(watts) / len(watts), "max_w": max(watts), "mean_sm_mhz": sum(clocks) / len(clocks),
                "samples": len(watts)}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds of fn() over `repeats` calls (after the caller's warm-up)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def fastest(fn, device: torch.device, repeats: int) -> float:
    """Seconds of fn()'s fastest call of `repeats` (each synchronized): what a difference of two timings is taken
    from, since other work on the machine only ever adds time, and a mean carries it into the difference."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def linear_flops(model: torch.nn.Module, run) -> float:
    """FLOPs of every nn.Linear product during run(): 2 x rows x in x out (LoRA's own small products included)."""
    total = [0.0]

    def hook(module, args, output):
        x = args[0]
        total[0] += 2.0 * (x.numel() // x.shape[-1]) * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def kernel_profile(run, device: torch.device, top: int | None = 12) -> dict:
    """Kernel time of one run() by kind (matmul / attention / other) and the `top` longest kernels (ms; None: all)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    by_kind = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    kernels = []
    from torch.autograd import DeviceType

    events = prof.key_averages()
    typed = any(getattr(e, "device_type", None) == DeviceType.CUDA for e in events)  # else: tell kernels by name
    for event in events:
        if device.type == "cuda":
            # GPU-side events only: CPU-side records (aten ops, runtime calls, and Inductor's per-kernel host records,
            # which carry their kernel's time a second time) and the profiler's own markers are not kernels
            if event.key in NOT_KERNELS or (typed and event.device_type != DeviceType.CUDA) \
                    or (not typed and event.key.startswith(("aten::", "cuda"))):
                continue
            micros = getattr(event, "self_device_time_total", None)
            if micros is None:
                micros = getattr(event, "self_cuda_time_total", 0.0)
            if not micros:
                continue
        else:  # aten ops' own time, and the C++ kernels Inductor generates for the CPU
            if not event.key.startswith(("aten::", "cpp_fused")) or event.key in ("aten::empty", "aten::view"):
                continue
            micros = event.self_cpu_time_total
        kind = kind_of(event.key)
        by_kind[kind] += micros / 1000.0
        kernels.append({"name": event.key[:120], "kind": kind, "ms": micros / 1000.0, "calls": event.count})
    total = sum(by_kind.values())
    kernels.sort(key=lambda k: -k["ms"])
    return {"total_ms": total, "ms_by_kind": by_kind,
            "share_by_kind": {k: (v / total if total else 0.0) for k, v in by_kind.items()}, "top": kernels[:top]}


def added_kernels(more: dict, less: dict, times: int) -> dict:
    """What `more`'s run spent beyond `less`'s (two `kernel_profile(top=None)` results), divided by `times`: kernel
    time by kind, and every kernel it launched more often (ms and calls per time, longest first). For the
    decoding steps: a whole caption less its prefill, per step."""
    by_kind = {kind: (more["ms_by_kind"][kind] - less["ms_by_kind"][kind]) / times for kind in more["ms_by_kind"]}
    base = {k["name"]: k for k in less["top"]}
    kernels = []
    for kernel in more["top"]:
        before = base.get(kernel["name"], {"ms": 0.0, "calls": 0})
        if kernel["calls"] > before["calls"]:
            kernels.append({"name": kernel["name"], "kind": kernel["kind"], "ms": (kernel["ms"] - before["ms"]) / times,
                            "calls": (kernel["calls"] - before["calls"]) / times})
    kernels.sort(key=lambda k: -k["ms"])
    return {"total_ms": sum(by_kind.values()), "ms_by_kind": by_kind, "top": kernels}


# how a decoding step is profiled: label -> (the step kind it asks for, its layers compiled)
STEP_KINDS = {"masked": ("masked", False), "exact-length": ("exact-length", False),
              "exact-length, compiled": ("exact-length", True)}


def step_kinds_profile(setup, inputs: dict, ids: dict, *, new_tokens: int, repeats: int) -> dict:
    """Per decoding step of each kind (`STEP_KINDS`), with the eager prefill: ms per step, the kind that actually ran
    (exact-length needs an unpadded batch), any graph capture or compile failure, and its kernels by kind."""
    from captionlab.models.decoding import GreedyDecoder

    device, steps = setup.device, new_tokens - 1
    kinds = {}
    for kind, (step_kind, compile_steps) in STEP_KINDS.items():
        decoder = GreedyDecoder(setup.model, exact_length_steps=step_kind == "exact-length", compile_steps=compile_steps)

        def prefill():
            decoder(inputs, max_new_tokens=1, min_new_tokens=1, **ids)  # no decoding step

        def caption():
            decoder(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **ids)

        caption()  # warm-up: captures the step graphs
        prefill_s, caption_s = fastest(prefill, device, repeats), fastest(caption, device, repeats)
        step_ms = (caption_s - prefill_s) / steps * 1000.0
        kinds[kind] = {"asked": step_kind, "ran": decoder.last_step_kind, "graph_error": decoder.last_graph_error,
                       "compile_error": decoder.last_compile_error, "steps": steps,
                       # None: the steps took less than the timing noise (a caption no slower than its prefill)
                       "step_ms": step_ms if step_ms > 0 else None,
                       "kernels": added_kernels(kernel_profile(caption, device, top=None),
                                                kernel_profile(prefill, device, top=None), steps)}
        decoder.release()
        free_memory(device)
    masked, exact = kinds["masked"]["step_ms"], kinds["exact-length"]["step_ms"]
    compiled = kinds["exact-length, compiled"]["step_ms"]
    return {**kinds, "exact_over_masked": exact / masked if exact and masked else None,
            "compiled_over_exact": compiled / exact if compiled and exact else None}


def square_matmul_rate(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    """TFLOP/s of size^3 products in `dtype`, run back to back for about `seconds`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            torch.mm(a, b)
        synchronize(device)
        done += 10
    elapsed = time.perf_counter() - start
    return 2.0 * size ** 3 * done / elapsed / 1e12


def profile_captioning(setup, *, batch: int, new_tokens: int, repeats: int, compiled: bool, square: int,
                       square_seconds: float, steps: bool = True) -> dict:
    from bench.caption_throughput import caption_inputs
    from captionlab.models.decoding import GreedyDecoder

    device = setup.device
    pixels = setup.random_pixels(batch, torch.Generator().manual_seed(0))
    inputs = caption_inputs(setup, pixels)
    setup.model.eval()
    decoder = GreedyDecoder(setup.model)
    ids = dict(eos_token_id=setup.eos_id, pad_token_id=setup.pad_id)

    def prefill():
        decoder(inputs, max_new_tokens=1, min_new_tokens=1, **ids)

    def caption():
        decoder(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **ids)

    report: dict = {"batch": batch, "new_tokens": new_tokens, "tokens_per_image": int(inputs["input_ids"].shape[1])}
    caption()  # warm-up (CUDA graph capture, cuBLAS handles)
    prefill()
    sampler = PowerSampler(device)
    with sampler:
        prefill_s = fastest(prefill, device, repeats)
    caption_s = fastest(caption, device, repeats)
    report["timing"] = {"prefill_s": prefill_s, "caption_s": caption_s, "prefill_images_per_s": batch / prefill_s,
                        "caption_images_per_s": batch / caption_s, "prefill_share": prefill_s / caption_s,
                        "decoding_s": caption_s - prefill_s, "decoding_steps": decoder.last_step_kind}
    report["power_during_prefill"] = sampler.summary()

    with torch.inference_mode():
        flops = linear_flops(setup.model, prefill)
    kernels = kernel_profile(prefill, device)
    matmul_s = kernels["ms_by_kind"]["matmul"] / 1000.0
    report["kernels"] = kernels
    report["matmul"] = {
        "linear_tflop_per_prefill": flops / 1e12,
        "achieved_tflop_per_s": flops / matmul_s / 1e12 if matmul_s else None,
        "ceiling_images_per_s": batch / (matmul_s + report["timing"]["decoding_s"]) if matmul_s else None,
    }
    if square:
        report["matmul"]["square"] = {"size": square, "dtype": str(setup.dtype),
                                      "tflop_per_s": square_matmul_rate(device, setup.dtype, square, square_seconds)}
    decoder.release()
    free_memory(device)

    if steps and new_tokens > 1:
        report["decoding_steps"] = step_kinds_profile(setup, inputs, ids, new_tokens=new_tokens, repeats=repeats)

    if compiled:
        fast = GreedyDecoder(setup.model, compile_prefill=True)

        def fast_prefill():
            fast(inputs, max_new_tokens=1, min_new_tokens=1, **ids)

        def fast_caption():
            fast(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **ids)

        start = time.perf_counter()
        fast_caption()  # compiles
        synchronize(device)
        first = time.perf_counter() - start
        fast_prefill()
        with PowerSampler(device) as fast_power:
            fast_prefill_s = fastest(fast_prefill, device, repeats)
        fast_caption_s = fastest(fast_caption, device, repeats)
        report["compiled"] = {"first_call_s": first, "prefill_s": fast_prefill_s, "caption_s": fast_caption_s,
                              "caption_images_per_s": batch / fast_caption_s,
                              "prefill_speedup": prefill_s / fast_prefill_s, "caption_speedup": caption_s / fast_caption_s,
                              "error": fast.last_compile_error, "power_during_prefill": fast_power.summary(),
                              "kernels": kernel_profile(fast_prefill, device)}
        fast.release()
        free_memory(device)
    return report


def markdown(report: dict) -> str:
    t, m, k = report["timing"], report["matmul"], report["kernels"]
    lines = [f"# Where captioning time goes: {report['model']} on {report['environment'].get('device_name', report['environment'].get('device'))}",
             "", f"Batch {report['batch']}, {report['tokens_per_image']} tokens per image, {report['new_tokens']} new tokens.", "",
             f"- prefill {t['prefill_s'] * 1000:.1f} ms ({t['prefill_images_per_s']:.1f} images/s), whole caption "
             f"{t['caption_s'] * 1000:.1f} ms ({t['caption_images_per_s']:.1f} images/s, {t.get('decoding_steps')} steps): "
             f"prefill {t['prefill_share']:.0%} of the time",
             f"- prefill kernels {k['total_ms']:.1f} ms: " + ", ".join(f"{kind} {ms:.1f} ms ({k['share_by_kind'][kind]:.0%})"
                                                                     for kind, ms in k["ms_by_kind"].items()),
             f"- matrix products: {m['linear_tflop_per_prefill']:.3g} TFLOP per prefill at "
             + (f"{m['achieved_tflop_per_s']:.3g} TFLOP/s" if m["achieved_tflop_per_s"] else "n/a")
             + (f"; square {m['square']['size']}^3 products: {m['square']['tflop_per_s']:.3g} TFLOP/s" if m.get("square") else "")
             + (f"; ceiling if nothing else took time: {m['ceiling_images_per_s']:.1f} images/s" if m["ceiling_images_per_s"] else "")]
    power = report.get("power_during_prefill")
    if power:
        lines.append(f"- during the prefill: {power['mean_w']:.0f} W mean ({power['max_w']:.0f} max), SM clock {power['mean_sm_mhz']:.0f} MHz")
    steps = report.get("decoding_steps")
    if steps:
        for kind in STEP_KINDS:
            one = steps[kind]
            launched = sum(k["calls"] for k in one["kernels"]["top"])
            per_step = (f"{one['step_ms']:.2f} ms per step" if one["step_ms"]
                        else "not measurable (the caption was no slower than its prefill: raise --new-tokens)")
            lines.append(f"- decoding step, {kind}: {per_step} (of {one['steps']}); kernels per step "
                         + ", ".join(f"{name} {ms:.2f} ms" for name, ms in one["kernels"]["ms_by_kind"].items())
                         + f" ({launched:g} launched)"
                         + (f"; RAN {one['ran']} instead" if one["ran"] != one["asked"] else "")
                         + (f"; CUDA graph capture FAILED, op by op: {one['graph_error']}" if one["graph_error"] else "")
                         + (f"; compiling FAILED, layers ran eagerly: {one['compile_error']}" if one["compile_error"] else ""))
        if steps["exact_over_masked"]:
            lines.append(f"- exact-length step / masked step: x{steps['exact_over_masked']:.3f}")
        if steps["compiled_over_exact"]:
            lines.append(f"- exact-length step, compiled / eager layers: x{steps['compiled_over_exact']:.3f}")
    c = report.get("compiled")
    if c:
        lines.append(f"- compiled prefill (first call {c['first_call_s']:.1f} s): prefill {c['prefill_s'] * 1000:.1f} ms "
                     f"(x{c['prefill_speedup']:.3f}), caption {c['caption_images_per_s']:.1f} images/s (x{c['caption_speedup']:.3f})"
                     + (f"; FAILED, ran eagerly: {c['error']}" if c["error"] else "")
                     + "; kernels " + ", ".join(f"{kind} {ms:.1f} ms" for kind, ms in c["kernels"]["ms_by_kind"].items()))
    lines += ["", "| kernel | kind | ms | calls |", "|---|---|---|---|"]
    lines += [f"| `{x['name']}` | {x['kind']} | {x['ms']:.2f} | {x['calls']} |" for x in k["top"]]
    if steps:
        lines += ["", "Kernels the decoding steps launch, per step:", "",
                  "| step | kernel | kind | ms | calls |", "|---|---|---|---|---|"]
        lines += [f"| {kind} | `{x['name']}` | {x['kind']} | {x['ms']:.3f} | {x['calls']:g} |"
                  for kind in STEP_KINDS for x in steps[kind]["kernels"]["top"][:8]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = bench_parser(__doc__, "llava-1.5-7b (CUDA default), llava-1.6-7b, tiny (CPU default), ...")
    p.add_argument("--batch", type=int, default=None, help="images per batch (64 on CUDA, 4 on the CPU)")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip the compiled-prefill measurement")
    p.add_argument("--no-steps", action="store_true", help="skip the per-step measurement of both decoding step kinds")
    p.add_argument("--square", type=int, default=None, help="size of the square product (8192 on CUDA, 0 = skip)")
    p.add_argument("--square-seconds", type=float, default=3.0)
    p.add_argument("--shrink", action="store_true", help="the real model's code path with tiny widths (CPU check)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = args.model or ("llava-1.5-7b" if cuda else "tiny")
    setup = make_setup(model, device, shrink=args.shrink)
    report = profile_captioning(setup, batch=args.batch or (64 if cuda else 4), new_tokens=args.new_tokens,
                                repeats=args.repeats, compiled=not args.no_compile, steps=not args.no_steps,
                                square=args.square if args.square is not None else (8192 if cuda else 0),
                                square_seconds=args.square_seconds)
    report = {"model": setup.name, "environment": environment(device, None, ["bench.prefill_profile", *argv]), **report}
    text = markdown(report)
    paths = write_report(report, args.out, f"prefill_profile-{setup.name}", render=markdown)
    print(text)
    print(f"wrote {paths[0]} and {paths[1]}")
    return report


if __name__ == "__main__":
    main()

"""Energy used by a training run: measured where the hardware allows, an explicitly labelled estimate otherwise.

    meter = EnergyMeter("cuda")      # or "cpu", "cuda:1", None (= cuda if available)
    meter.start()
    ...                              # train; call meter.joules() every step or so
    meter.joules()                   # cumulative joules since start()
    meter.describe()                 # {"method": "nvml", "label": "measured: GPU only, NVML ...",
                                     #  "device": "NVIDIA H100 ...", "covers": "GPU"}

Methods, best first:
  nvml       the GPU's own cumulative energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ),
             summed over the GPUs this process uses. Volta or newer. GPU only.
  nvml+rapl  the same, plus the CPU packages and their DRAM through RAPL where readable: the GPU,
             CPU package and DRAM together (still not the rest of the machine: fans, disks, PSU losses).
  rapl       Linux powercap RAPL counters (/sys/class/powercap/intel-rapl:N/energy_uj, and the `dram`
             sub-zones intel-rapl:N:M, which the package's counter leaves out) for a CPU run, where
             readable (often root-only). They cover whole CPU packages, every process on them.
  estimate   assumed watts x elapsed seconds; the assumption is written into the label.
A GPU run never replaces NVML by RAPL: the CPU package's energy is not the GPU's. Every figure carries
its method, device and `covers` (the parts its number counts: "GPU", "GPU + CPU package + DRAM", ...);
`method == "estimate"` is never presented as a measurement. The paper does not say what its Table 4's kWh
cover (GPU only, or the whole node): its figures and ours are comparable only where the scopes agree.

`summarize_energy` turns per-epoch joules into the paper's Table 4 shape (kWh for all epochs and
up to the best checkpoint).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

JOULES_PER_KWH = 3.6e6
RAPL_ROOT = Path("/sys/class/powercap")
ASSUMED_WATTS_PER_CPU_CORE = 10.0
ASSUMED_GPU_WATTS = 300.0  # used only when NVML cannot even report the GPU's power limit
_RAPL_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # packages; their core/uncore sub-zones are already counted
_RAPL_SUBZONE = re.compile(r"^intel-rapl:\d+:\d+$")  # of which `dram` is not part of the package's counter
MEASURED_METHODS = ("nvml", "nvml+rapl", "rapl")


class EnergyMeter:
    """Cumulative energy since `start()`, by the best method available for `device`."""

    def __init__(self, device: str | None = None, *, rapl_root: Path = RAPL_ROOT,
                 cpu_cores: int | None = None, watts_per_core: float = ASSUMED_WATTS_PER_CPU_CORE):
        self.device = _normalize_device(device)
        self._start_time: float | None = None
        self._reader = _build_reader(self.device, Path(rapl_root), cpu_cores, watts_per_core)
        self.method: str = self._reader.method
        self.label: str = self._reader.label
        self.device_name: str = self._reader.device_name
        self.covers: str = self._reader.covers

    @property
    def is_estimate(self) -> bool:
        return self.method == "estimate"

    def start(self) -> "EnergyMeter":
        self._start_time = time.monotonic()
        self._reader.start()
        return self

    def joules(self) -> float:
        """Joules since start(); poll at least every few minutes so RAPL wrap-arounds are not missed."""
        if self._start_time is None:
            raise RuntimeError("EnergyMeter.joules() called before start()")
        return self._reader.joules(time.monotonic() - self._start_time)

    def describe(self) -> dict:
        """method, label, device and the parts counted: what every energy figure records beside its number."""
        return {"method": self.method, "label": self.label, "device": self.device_name, "covers": self.covers}


def covered_parts(energy: Mapping) -> str:
    """What an energy figure (energy.json, a meter's describe()) counts: its `covers`, or for figures written before
    they said so, what their method counts."""
    if energy.get("covers"):
        return str(energy["covers"])
    method = energy.get("method")
    if method == "nvml":
        return "GPU"
    if method == "rapl":
        return "CPU package"
    gpu = "GPU" in str(energy.get("device") or "") or "GPU" in str(energy.get("label") or "")
    return ("GPU" if gpu else "CPU") + (" (estimated)" if method == "estimate" else "")


def summarize_energy(per_epoch_joules: Sequence[float] | Mapping[int, float], best_epoch: int | None, *,
                     method: str = "unknown", label: str | None = None, device: str = "unknown",
                     covers: str | None = None) -> dict:
    """Energy for all epochs and up to (and including) the best one, in kWh, as in the paper's Table 4.

    `per_epoch_joules` is a list for epochs 1..n, or a mapping {epoch number: joules} in whatever
    numbering the trainer uses; `best_epoch` is in that same numbering (None: no best yet).
    """
    by_epoch = dict(per_epoch_joules) if isinstance(per_epoch_joules, Mapping) else {
        epoch: joules for epoch, joules in enumerate(per_epoch_joules, start=1)}
    if best_epoch is not None and best_epoch not in by_epoch:
        raise ValueError(f"best_epoch {best_epoch} is not among the epochs {sorted(by_epoch)}")
    total = float(sum(by_epoch.values()))
    up_to_best = None if best_epoch is None else float(sum(j for e, j in by_epoch.items() if e <= best_epoch))
    return {
        "kwh_all_epochs": total / JOULES_PER_KWH,
        "kwh_best": None if up_to_best is None else up_to_best / JOULES_PER_KWH,
        "joules_all_epochs": total,
        "joules_best": up_to_best,
        "per_epoch_kwh": {str(e): j / JOULES_PER_KWH for e, j in sorted(by_epoch.items())},
        "epochs": len(by_epoch),
        "best_epoch": best_epoch,
        "method": method,
        "label": label or method,
        "device": device,
        "covers": covers or covered_parts({"method": method, "label": label, "device": device}),
        "measured": method in MEASURED_METHODS,
    }


def energy_so_far_kwh(completed_kwh: float | None, logged_j: float | None,
                      initial_validation_kwh: float | None = None) -> float | None:
    """A run's energy so far: its completed epochs' total (energy.json, every process's meter) plus the untrained
    model's validation pass before them (kept out of the epochs, as the paper's protocol does not run it), or the
    newest metrics row's energy (the main process's meter, up to its step, that pass included) where that is more,
    as after a stop or while watched mid-epoch. The one rule the runs listing, the CLI and the Train tab all show."""
    logged_kwh = None if logged_j is None else logged_j / JOULES_PER_KWH
    completed_total = completed_run_kwh(completed_kwh, initial_validation_kwh)
    if logged_kwh is not None and (completed_total is None or logged_kwh > completed_total):
        return logged_kwh
    return completed_total


def completed_run_kwh(completed_kwh: float | None, initial_validation_kwh: float | None) -> float | None:
    """What a run spent up to its last completed epoch: those epochs and the validation pass before epoch 1."""
    return None if completed_kwh is None else completed_kwh + (initial_validation_kwh or 0.0)


# --- readers: one per method -------------------------------------------------------------------


class _NvmlReader:
    method = "nvml"

    def __init__(self, nvml, handles: list, names: list[str]):
        self._nvml, self._handles = nvml, handles
        self.device_name = _join_names(names)
        self.label = f"measured: GPU only, NVML total energy counter, {len(handles)} GPU(s)"
        self.covers = "GPU"
        self._start_mj: list[int] = []

    def start(self) -> None:
        self._start_mj = self._read()

    def joules(self, elapsed_s: float) -> float:
        return sum(now - then for now, then in zip(self._read(), self._start_mj)) / 1000.0

    def _read(self) -> list[int]:
        return [int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles]


class _RaplReader:
    method = "rapl"

    def __init__(self, zones: list[Path]):
        self._zones = zones
        self._max_uj = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        names = [_read_or(z / "name", z.name) for z in zones]
        dram = sum(name == "dram" for name in names)
        self.device_name = f"CPU ({', '.join(names)}; whole package, all processes)"
        self.label = (f"measured: Linux RAPL energy counters, {len(zones) - dram} package(s)"
                      + (f" + {dram} DRAM zone(s)" if dram else ""))
        self.covers = "CPU package + DRAM" if dram else "CPU package"
        self._last_uj: list[int] = []
        self._total_uj = 0

    def start(self) -> None:
        self._last_uj, self._total_uj = self._read(), 0

    def joules(self, elapsed_s: float) -> float:
        now = self._read()
        for i, (current, last) in enumerate(zip(now, self._last_uj)):
            delta = current - last
            self._total_uj += delta if delta >= 0 else delta + self._max_uj[i]  # the counter wrapped
        self._last_uj = now
        return self._total_uj / 1e6

    def _read(self) -> list[int]:
        return [int((z / "energy_uj").read_text()) for z in self._zones]


class _GpuAndCpuReader:
    """NVML's GPU energy plus RAPL's CPU packages and DRAM, where RAPL is readable on a GPU run."""

    method = "nvml+rapl"

    def __init__(self, gpu: _NvmlReader, cpu: _RaplReader):
        self._gpu, self._cpu = gpu, cpu
        self.device_name = f"{gpu.device_name} + {cpu.device_name}"
        self.covers = f"GPU + {cpu.covers}"
        self.label = (f"measured: GPU by NVML ({gpu.label.split(', ')[-1]}) + {cpu.covers} by RAPL "
                      f"({cpu.label.removeprefix('measured: Linux RAPL energy counters, ')}; whole packages, "
                      "all processes)")

    def start(self) -> None:
        self._gpu.start()
        self._cpu.start()

    def joules(self, elapsed_s: float) -> float:
        return self._gpu.joules(elapsed_s) + self._cpu.joules(elapsed_s)


class _EstimateReader:
    method = "estimate"

    def __init__(self, watts: float, label: str, device_name: str):
        self.watts, self.label, self.device_name = watts, label, device_name
        self.covers = ("GPU" if device_name.startswith("GPU") or "GPU(s)" in label else "CPU") + " (estimated)"

    def start(self) -> None:
        pass

    def joules(self, elapsed_s: float) -> float:
        return self.watts * elapsed_s


def _build_reader(device: str, rapl_root: Path, cpu_cores: int | None, watts_per_core: float):
    if device.startswith("cuda"):
        gpu = _gpu_reader(_cuda_indices(device))
        zones = _readable_rapl_zones(rapl_root) if isinstance(gpu, _NvmlReader) else []
        return _GpuAndCpuReader(gpu, _RaplReader(zones)) if zones else gpu
    zones = _readable_rapl_zones(rapl_root)
    if zones:
        return _RaplReader(zones)
    cores = cpu_cores or _cores_used()
    return _EstimateReader(cores * watts_per_core, f"estimate: {cores} cores x {watts_per_core:g} W assumed",
                           f"CPU ({cores} cores)")


def _gpu_reader(cuda_indices: list[int]):
    """NVML energy counter; else an estimate at the GPUs' power limit (or an assumed figure)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [_nvml_handle(pynvml, i) for i in cuda_indices]
        names = [_decode(pynvml.nvmlDeviceGetName(h)) for h in handles]
    except Exception as exc:  # no driver, no pynvml, no such GPU
        return _EstimateReader(len(cuda_indices) * ASSUMED_GPU_WATTS,
                               f"estimate: {len(cuda_indices)} GPU(s) x {ASSUMED_GPU_WATTS:g} W assumed "
                               f"(NVML unavailable: {exc})", f"GPU {cuda_indices}")
    try:
        for handle in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return _NvmlReader(pynvml, handles, names)
    except Exception:  # counter not supported (pre-Volta) or not permitted
        pass
    try:
        limits_w = [pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0 for h in handles]
        detail = " + ".join(f"{w:g} W" for w in limits_w)
        return _EstimateReader(sum(limits_w), f"estimate: {len(handles)} GPU(s) at power limit {detail} assumed "
                               "(no NVML energy counter)", _join_names(names))
    except Exception:
        return _EstimateReader(len(handles) * ASSUMED_GPU_WATTS,
                               f"estimate: {len(handles)} GPU(s) x {ASSUMED_GPU_WATTS:g} W assumed "
                               "(no NVML energy counter or power limit)", _join_names(names))


def _nvml_handle(pynvml, cuda_index: int):
    """The NVML handle of CUDA device `cuda_index`, honouring CUDA_VISIBLE_DEVICES (indices or UUIDs)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
    entry = visible[cuda_index]
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def _readable_rapl_zones(root: Path) -> list[Path]:
    """The readable package zones and their `dram` sub-zones (none when any of them cannot be read)."""
    zones = sorted(p for p in root.glob("intel-rapl:*") if _RAPL_PACKAGE.match(p.name))
    zones += sorted(p for p in root.glob("intel-rapl:*") if _RAPL_SUBZONE.match(p.name)
                    and _read_or(p / "name", "") == "dram")
    try:
        for zone in zones:
            int((zone / "energy_uj").read_text())
            int((zone / "max_energy_range_uj").read_text())
    except (OSError, ValueError):  # root-only since CVE-2020-8694 on most kernels
        return []
    return zones


def _normalize_device(device: str | None) -> str:
    if device in (None, "auto"):
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return str(device)


def _cuda_indices(device: str) -> list[int]:
    """cuda:N is GPU N; bare cuda is this process's GPU (LOCAL_RANK under accelerate, else 0)."""
    _, _, index = device.partition(":")
    return [int(index)] if index else [int(os.environ.get("LOCAL_RANK", 0))]


def _cores_used() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _join_names(names: list[str]) -> str:
    if len(names) > 1 and len(set(names)) == 1:
        return f"{len(names)} x {names[0]}"
    return " + ".join(names)


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_or(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default

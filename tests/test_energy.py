"""EnergyMeter's three methods (NVML through a fake pynvml, RAPL through a fake sysfs, the labelled
estimate) and the Table 4 summary."""

from __future__ import annotations

import sys
import types

import pytest

from captionlab.training import energy
from captionlab.training.energy import EnergyMeter, summarize_energy


@pytest.fixture
def clock(monkeypatch):
    """A controllable monotonic clock for the estimate path."""
    now = [1000.0]
    monkeypatch.setattr(energy.time, "monotonic", lambda: now[0])
    return now


def make_rapl(root, zone, energy_uj, max_uj=1_000_000, name="package-0"):
    folder = root / zone
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (folder / "name").write_text(f"{name}\n")
    return folder


def fake_pynvml(counters_mj: dict, *, energy_supported=True, power_limit_mw=None, init_error=None):
    """A stand-in pynvml module: handles are GPU indices; counters_mj[index] is read live."""
    module = types.ModuleType("pynvml")

    def init():
        if init_error:
            raise init_error

    def total_energy(handle):
        if not energy_supported:
            raise RuntimeError("Not Supported")
        return counters_mj[handle]

    def power_limit(handle):
        if power_limit_mw is None:
            raise RuntimeError("Not Supported")
        return power_limit_mw

    module.nvmlInit = init
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetHandleByUUID = lambda uuid: int(uuid.rsplit("-", 1)[1])
    module.nvmlDeviceGetName = lambda handle: b"NVIDIA H100 80GB HBM3"
    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    module.nvmlDeviceGetEnforcedPowerLimit = power_limit
    return module


def test_estimate_is_labelled_with_its_assumption(tmp_path, clock):
    meter = EnergyMeter("cpu", rapl_root=tmp_path / "no-powercap", cpu_cores=2, watts_per_core=10).start()
    clock[0] += 30.0
    assert meter.method == "estimate" and meter.is_estimate
    assert meter.label == "estimate: 2 cores x 10 W assumed"
    assert meter.device_name == "CPU (2 cores)"
    assert meter.joules() == pytest.approx(600.0)
    assert meter.describe() == {"method": "estimate", "label": meter.label, "device": "CPU (2 cores)",
                                "covers": "CPU (estimated)"}


def test_joules_before_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="before start"):
        EnergyMeter("cpu", rapl_root=tmp_path).joules()


def test_rapl_sums_packages_ignores_subzones_and_handles_wraparound(tmp_path):
    package0 = make_rapl(tmp_path, "intel-rapl:0", 900_000, name="package-0")
    package1 = make_rapl(tmp_path, "intel-rapl:1", 100, name="package-1")
    make_rapl(tmp_path, "intel-rapl:0:0", 5, name="core")  # already inside package-0
    meter = EnergyMeter("cpu", rapl_root=tmp_path).start()
    assert meter.method == "rapl" and not meter.is_estimate
    assert "package-0" in meter.device_name and "package-1" in meter.device_name
    assert meter.label.startswith("measured:")

    (package0 / "energy_uj").write_text("950000\n")  # +0.05 J
    (package1 / "energy_uj").write_text("2000100\n")  # +2 J
    assert meter.joules() == pytest.approx(2.05)
    (package0 / "energy_uj").write_text("50000\n")  # wrapped at 1,000,000: +0.1 J
    assert meter.joules() == pytest.approx(2.15)


def test_unreadable_rapl_falls_back_to_estimate(tmp_path, clock):
    zone = make_rapl(tmp_path, "intel-rapl:0", 10)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable as a number, whoever we run as
    meter = EnergyMeter("cpu", rapl_root=tmp_path, cpu_cores=4, watts_per_core=5)
    assert meter.method == "estimate" and meter.label == "estimate: 4 cores x 5 W assumed"


def test_nvml_reads_the_gpu_counter_of_this_process(tmp_path, monkeypatch):
    counters = {0: 5_000, 3: 1_000_000}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counters))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # cuda:1 is physical GPU 3
    meter = EnergyMeter("cuda:1", rapl_root=tmp_path).start()
    assert meter.method == "nvml" and meter.device_name == "NVIDIA H100 80GB HBM3"
    counters[3] += 250_000  # mJ
    counters[0] += 999_999  # another GPU: not ours
    assert meter.joules() == pytest.approx(250.0)


def test_nvml_accepts_uuids_and_local_rank(tmp_path, monkeypatch):
    counters = {7: 0}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counters))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa-6,GPU-bbbb-7")
    monkeypatch.setenv("LOCAL_RANK", "1")
    meter = EnergyMeter("cuda", rapl_root=tmp_path).start()
    counters[7] += 1500
    assert meter.method == "nvml" and meter.joules() == pytest.approx(1.5)


def test_gpu_without_energy_counter_estimates_at_power_limit(tmp_path, monkeypatch, clock):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({0: 0}, energy_supported=False, power_limit_mw=700_000))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = EnergyMeter("cuda:0", rapl_root=tmp_path).start()
    clock[0] += 10
    assert meter.method == "estimate" and meter.label.startswith("estimate:") and "700 W" in meter.label
    assert meter.joules() == pytest.approx(7000.0)


def test_gpu_without_nvml_estimates_and_never_uses_rapl(tmp_path, monkeypatch, clock):
    make_rapl(tmp_path, "intel-rapl:0", 10)  # readable, but it measures the CPU, not the GPU
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({}, init_error=RuntimeError("driver not loaded")))
    meter = EnergyMeter("cuda", rapl_root=tmp_path).start()
    clock[0] += 2
    assert meter.method == "estimate" and "300 W assumed" in meter.label and "driver not loaded" in meter.label
    assert meter.joules() == pytest.approx(600.0)


def test_summary_has_table4_shape():
    summary = summarize_energy([1.8e6, 3.6e6, 1.8e6, 1.8e6], best_epoch=2, method="nvml",
                               label="measured: NVML", device="4 x A100")
    assert summary["kwh_all_epochs"] == pytest.approx(2.5)
    assert summary["kwh_best"] == pytest.approx(1.5)
    assert summary["per_epoch_kwh"] == {"1": 0.5, "2": 1.0, "3": 0.5, "4": 0.5}
    assert (summary["method"], summary["device"], summary["measured"]) == ("nvml", "4 x A100", True)


def test_summary_accepts_the_trainers_epoch_numbering_and_marks_estimates():
    summary = summarize_energy({0: 3.6e6, 1: 7.2e6}, best_epoch=0, method="estimate",
                               label="estimate: 2 cores x 10 W assumed", device="CPU")
    assert summary["kwh_best"] == pytest.approx(1.0) and summary["kwh_all_epochs"] == pytest.approx(3.0)
    assert summary["measured"] is False and summary["label"].startswith("estimate")
    assert summarize_energy([1.0], best_epoch=None)["kwh_best"] is None
    with pytest.raises(ValueError, match="best_epoch 5"):
        summarize_energy([1.0, 2.0], best_epoch=5)


def test_nvml_alone_is_labelled_gpu_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({0: 0}))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = EnergyMeter("cuda:0", rapl_root=tmp_path / "no-powercap")
    assert meter.method == "nvml" and "GPU only, NVML" in meter.label and meter.describe()["covers"] == "GPU"


def test_gpu_run_adds_cpu_package_and_dram_through_rapl_where_readable(tmp_path, monkeypatch):
    counters = {0: 0}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counters))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    package = make_rapl(tmp_path, "intel-rapl:0", 1_000, name="package-0")
    dram = make_rapl(tmp_path, "intel-rapl:0:1", 50, name="dram")
    make_rapl(tmp_path, "intel-rapl:0:0", 5, name="core")  # inside the package's counter already
    meter = EnergyMeter("cuda:0", rapl_root=tmp_path).start()
    assert meter.method == "nvml+rapl" and meter.covers == "GPU + CPU package + DRAM"
    assert "NVML" in meter.label and "RAPL" in meter.label and meter.label.startswith("measured:")
    counters[0] += 2_000  # 2 J on the GPU
    (package / "energy_uj").write_text(f"{1_000 + 300_000}\n")  # 0.3 J
    (dram / "energy_uj").write_text(f"{50 + 500_000}\n")  # 0.5 J
    assert meter.joules() == pytest.approx(2.0 + 0.3 + 0.5)
    summary = summarize_energy([3.6e6], best_epoch=1, **meter.describe())
    assert summary["measured"] is True and summary["covers"] == "GPU + CPU package + DRAM"


def test_covered_parts_of_figures_written_before_they_said(tmp_path):
    from captionlab.training.energy import covered_parts

    assert covered_parts({"method": "nvml", "label": "measured: NVML total energy counter, 4 GPU(s)"}) == "GPU"
    assert covered_parts({"method": "estimate", "label": "estimate: 2 cores x 10 W assumed",
                          "device": "CPU (2 cores)"}) == "CPU (estimated)"
    assert covered_parts({"method": "rapl", "covers": "CPU package + DRAM"}) == "CPU package + DRAM"

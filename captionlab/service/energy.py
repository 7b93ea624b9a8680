"""The Energy tab's data: the paper's Table 4 beside the energy your runs measured.

Every figure carries how it was obtained: the paper's are as printed (four A100s), a run's come
from its energy.json (`method`: nvml / rapl measured, or an explicitly labelled estimate).
Trainable parameters are shown as the paper prints them and as its own method text gives them
(the printed 19.7k and 13.1k are 10x below 48 x 4096 and 32 x 4096), and, on request, as
captionlab counts them on the model's config (meta device, no weights).

A run is set against quality (COCO CIDEr) only with an evaluation of its own checkpoint: one whose
recorded artifact lies in the run's folder, or for a shipped run record the artifact the zoo shipped
beside it (`<checkpoints>/runs/<key>/` -> `<checkpoints>/strategies/<key>/` or `<checkpoints>/<key>/`).
A run without one is listed as not evaluated, never plotted with another checkpoint's score.
"""

from __future__ import annotations

import json
from pathlib import Path

from captionlab import atomic, paths
from captionlab.service.benchmarks import coverage_label
from captionlab.service.catalog import PAPER_STRATEGIES, strategy_label
from captionlab.training.energy import MEASURED_METHODS, covered_parts
from captionlab.training.stages import earlier_stages, stages_kwh

PAPER_NOTE = ("The paper's Table 4 prints 19.7k (prompt learning) and 13.1k (prefix tuning) trainable parameters: "
              "10x below what its own method text gives, 48 tokens x 4096 = 196,608 and 32 layers x 1 token x 4096 "
              "= 131,072. Both are shown. Paper energy: four 64GB A100s, 4 epochs on COCO, method not stated.")


LORA_TARGETS_NOTE = ("LoRA / DoRA (r=128, alpha=256) adapt the LLM's seven projections (q, k, v, o, gate, up, down): "
                     "the layers whose count Table 4 prints (319,815,680 / 321,175,552). The paper's method text says "
                     "\"all fully connected layers of the MLLMs\"; that literal reading (vision tower, projector and "
                     "lm_head too) is the recipe option `lora_targets: all_linear`: 382,771,200 / 384,392,512 on "
                     "LLaVA-1.5-7B (`python -m captionlab params` counts both).")
SCOPE_NOTE = ("Each figure says what it covers: NVML counts the GPU only; RAPL, where readable, adds the CPU packages "
              "and their DRAM (whole packages, every process on them); an estimate says what it assumed. The paper "
              "does not say what its kWh cover.")


def paper_table() -> list[dict]:
    """Table 4 rows with both parameter counts and the note on each."""
    from captionlab.evaluation.reference_data import paper_energy

    rows = []
    for row in paper_energy():
        rows.append({
            "Strategy": strategy_label(row["strategy"]),
            "key": row["strategy"],
            "Params (printed)": row["trainable_params_printed"],
            "Params (method text)": f"{row['trainable_params_method']:,}" if row["trainable_params_method"] else "—",
            "kWh all epochs": row["kwh_all_epochs"],
            "kWh up to best": row["kwh_best"],
            "Covers": "not stated by the paper",
            "Note": row["note"],
        })
    return rows


def _params_cache(model: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    return paths.workspace() / "cache" / f"params-{safe}.json"


def counted_parameters(model: str, compute: bool = False) -> dict[str, int] | None:
    """Trainable parameters per strategy counted by captionlab (cached; computed when asked)."""
    cache = _params_cache(model)
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except json.JSONDecodeError:
            pass
    if not compute:
        return None
    from captionlab.strategies.counting import count_trainable

    counts = count_trainable(model)
    atomic.write_json(cache, counts)
    return counts


def run_energy_rows(checkpoints: Path | None = None) -> list[dict]:
    """One row per run with energy figures: the workspace's runs, then runs shipped with the checkpoints."""
    rows = []
    from captionlab.training import runs_db
    from captionlab.training.run_folder import RunFolder

    for run in runs_db.list_runs():
        folder = RunFolder(Path(run["run_dir"]))
        energy = folder.read_energy()
        if energy:
            rows.append(_energy_row(energy, run["run_id"], run.get("model") or "", run.get("strategy") or "",
                                    "workspace", folder.path, [folder.path]))
    if checkpoints is not None and Path(checkpoints).is_dir():
        for path in sorted(Path(checkpoints).glob("**/energy.json"))[:200]:
            try:
                energy = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            rows.append(_energy_row(energy, path.parent.name, energy.get("model", ""), energy.get("strategy", ""),
                                    "shipped", path.parent, _shipped_artifacts(Path(checkpoints), path.parent)))
    return _link_stages(rows)


def _link_stages(rows: list[dict]) -> list[dict]:
    """A run that continues another (`init_from`, e.g. SCST after cross-entropy) counts its earlier stages' energy
    in its own figures; an earlier stage stays listed, marked `stage_of`, and is neither plotted nor counted as a
    run awaiting its own evaluation."""
    by_folder = {Path(r["folder"]).resolve(): r for r in rows}
    for row in rows:
        stages = earlier_stages(Path(row["folder"]))
        nearest = by_folder.get(stages[0][1]) if stages else None
        if nearest is not None and nearest is not row:
            nearest["stage_of"] = row["Run"]
            nearest["Covers"] = f"{nearest['Covers']}; counted in {row['Run']}"
        stage_kwh, _ = stages_kwh(stages)
        if stages and row["kWh all epochs"] is not None:
            row["kWh all epochs"] += stage_kwh
            if row["kWh up to best"] is not None:
                row["kWh up to best"] += stage_kwh
            row["Covers"] = f"{row['Covers']} + {', '.join(name for name, _, _ in stages)}"  # its row shows its kWh
    return rows


def _shipped_artifacts(checkpoints: Path, folder: Path) -> list[Path]:
    """The run folder, and for the zoo's record of a run (`runs/<key>/`) the artifact shipped for it."""
    if folder.parent != checkpoints / "runs":
        return [folder]
    return [folder, checkpoints / "strategies" / folder.name, checkpoints / folder.name]


def _energy_row(energy: dict, run: str, model: str, strategy: str, origin: str, folder: Path,
                artifacts: list[Path]) -> dict:
    method = energy.get("method") or "unknown"
    measured = energy.get("measured", method in MEASURED_METHODS)
    return {
        "Run": run, "Origin": origin, "Model": energy.get("model") or model,
        "Strategy": strategy_label(energy.get("strategy") or strategy), "key": energy.get("strategy") or strategy,
        "Params": f"{energy['trainable_parameters']:,}" if energy.get("trainable_parameters") else "—",
        "kWh all epochs": energy.get("kwh_all_epochs"), "kWh up to best": energy.get("kwh_best"),
        "Best epoch": f"{energy.get('best_epoch') or '—'} of {energy.get('epochs') or '?'}",
        "Method": _method_text(energy.get("label") or method, measured), "Covers": covered_parts(energy),
        "Device": energy.get("device") or "unknown", "folder": str(folder),
        "artifacts": [str(Path(a).resolve()) for a in artifacts],
    }


def _method_text(label: str, measured: bool) -> str:
    """The label, starting with "measured" or "ESTIMATE" so an estimate is never read as a measurement."""
    lowered = label.lower()
    if measured:
        return label if lowered.startswith("measured") else f"measured: {label}"
    return "ESTIMATE" + label[len("estimate"):] if lowered.startswith("estimate") else f"ESTIMATE: {label}"


def energy_bars(paper: list[dict], runs: list[dict]) -> list[dict]:
    """[{source, strategy, kwh_all, kwh_best, method}] for the bar chart, paper first."""
    bars = [{"source": "paper (4x A100, as printed)", "strategy": r["Strategy"], "key": r["key"],
             "kwh_all": r["kWh all epochs"], "kwh_best": r["kWh up to best"], "method": "as printed"} for r in paper]
    for r in runs:
        if r["kWh all epochs"] is not None and not r.get("stage_of"):
            bars.append({"source": f"yours · {r['Run']}", "strategy": r["Strategy"], "key": r["key"],
                         "kwh_all": r["kWh all epochs"], "kwh_best": r["kWh up to best"], "method": r["Method"]})
    order = {k: i for i, k in enumerate(PAPER_STRATEGIES)}
    return sorted(bars, key=lambda b: (not b["source"].startswith("paper"), order.get(b["key"], 99)))


def quality_points(paper: list[dict], runs: list[dict], results: list[dict]) -> list[dict]:
    """CIDEr on COCO against kWh: Table 4 with Table 1 (LLaVA-v1.5-7B), and your runs with the
    evaluations of their own checkpoints (`unevaluated_runs` are the others)."""
    points = []
    paper_cider = {r["strategy"]: r["metrics"].get("CIDEr") for r in results
                   if r["source"] == "paper" and r["dataset"] == "coco" and r["model"] == "LLaVA-v1.5-7B"}
    for r in paper:
        if paper_cider.get(r["key"]) is not None:
            points.append({"source": "paper", "strategy": r["Strategy"], "kwh": r["kWh all epochs"],
                           "kwh_best": r["kWh up to best"], "cider": paper_cider[r["key"]], "method": "as printed"})
    for run in runs:
        match = None if run.get("stage_of") else result_for_run(run, results)
        if match is not None and run["kWh all epochs"] is not None:
            images = f" (CIDEr on {coverage_label(match['coverage'])})" if match.get("coverage") else ""
            points.append({"source": f"yours · {run['Run']}{images}", "strategy": run["Strategy"],
                           "kwh": run["kWh all epochs"], "kwh_best": run["kWh up to best"],
                           "cider": match["metrics"]["CIDEr"], "method": run["Method"]})
    return points


def result_for_run(run: dict, results: list[dict]) -> dict | None:
    """The COCO evaluation of this run's own checkpoint (of the whole split before a subset, then
    the newest), or None: never another checkpoint's, even of the same model and strategy."""
    artifacts = [Path(a).resolve() for a in run.get("artifacts") or [run["folder"]]]
    own = [r for r in results
           if r["source"] == "yours" and r["dataset"] == "coco" and r["metrics"].get("CIDEr") is not None
           and r.get("checkpoint_key") and any(Path(r["checkpoint_key"]).is_relative_to(a) for a in artifacts)]
    return max(own, key=lambda r: (r.get("coverage") is None, r.get("created_at") or ""), default=None)


def unevaluated_runs(runs: list[dict], results: list[dict]) -> list[dict]:
    """The runs with energy figures but no COCO evaluation of their own checkpoint (a first stage that a later run
    continues is counted in that run, not here)."""
    return [run for run in runs if run["kWh all epochs"] is not None and not run.get("stage_of")
            and result_for_run(run, results) is None]


def quality_note(runs: list[dict], results: list[dict]) -> str:
    """A line under the quality chart naming the runs it leaves out and why ("" when none)."""
    missing = unevaluated_runs(runs, results)
    if not missing:
        return ""
    names = ", ".join(f"{run['Run']} ({run['Strategy']})" for run in missing)
    return (f"*Not evaluated, so not plotted against CIDEr:* {names}. Evaluate a run's own checkpoint on COCO "
            "(Benchmarks → Run an evaluation, checkpoint: its run id) to place it.")

"""A study's report: Tables 1-4 (through `captionlab.report`, as the embedded study's) and the paper's Fig. 2
(CIDEr on nocaps, VizWiz and TextCaps per captioner) as files in `<study>/results/`.

The inputs are gathered in the layout `captionlab.report` reads: each finished cell's results.json and
predictions.jsonl copied to `results/<strategy>/<dataset>/`, each training's energy.json to `runs/<strategy>/`.
The app's Benchmarks and Energy tabs show the same results from where the study recorded them (the workspace's
results database and runs registry), not from these copies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from captionlab import atomic
from captionlab.names import FIG2_DATASETS, STUDY_ORDER, strategy_label
from captionlab.study import state as states

SVG_BAR_W, SVG_GROUP_GAP, SVG_H = 14, 24, 240


def gather_inputs(plan) -> None:
    """Copy each finished cell's results and each finished training's energy.json into the report's layout (copies
    of an earlier selection removed first: the report shows the study as asked now)."""
    for copies in [*(plan.out / "results").glob("*/"), plan.out / "runs"]:
        if copies.is_dir():
            shutil.rmtree(copies)
    for cell in plan.cells:
        done = atomic.read_json_object(states.cell_dir(plan.out, cell.name) / "done.json")
        source = Path(done.get("results_path") or "")
        if not source.is_file():
            continue
        target = plan.out / "results" / cell.strategy / cell.dataset
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / "results.json")
        predictions = source.parent / "predictions.jsonl"
        if predictions.exists():
            shutil.copy2(predictions, target / "predictions.jsonl")
    for training in plan.trainings:
        record = states.training_record(plan.out, training.strategy)
        energy = Path(record.get("run_dir", "")) / "energy.json"
        if record and energy.is_file():
            (plan.out / "runs" / training.strategy).mkdir(parents=True, exist_ok=True)
            shutil.copy2(energy, plan.out / "runs" / training.strategy / "energy.json")


def fig2_rows(out: Path) -> list[dict]:
    """One row per captioner: its CIDEr on each of Fig. 2's benchmarks (None where not evaluated)."""
    rows = []
    for strategy in STUDY_ORDER:
        values = {}
        for dataset in FIG2_DATASETS:
            path = out / "results" / strategy / dataset / "results.json"
            values[dataset] = (json.loads(path.read_text())["result"]["metrics"].get("CIDEr")
                               if path.exists() else None)
        if any(v is not None for v in values.values()):
            rows.append({"strategy": strategy, **values})
    return rows


def fig2_csv(rows: list[dict]) -> str:
    lines = ["captioner," + ",".join(FIG2_DATASETS)]
    for row in rows:
        cells = ["" if row[d] is None else f"{row[d]:.2f}" for d in FIG2_DATASETS]
        lines.append(f"{strategy_label(row['strategy'])}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def fig2_svg(rows: list[dict], model: str) -> str:
    """Grouped bars (a group per benchmark, a bar per captioner), self-contained SVG."""
    top = max([row[d] for row in rows for d in FIG2_DATASETS if row[d] is not None] or [1.0]) or 1.0
    group_w = len(rows) * SVG_BAR_W + SVG_GROUP_GAP
    width = 60 + group_w * len(FIG2_DATASETS) + 180
    shapes = [f'<text x="10" y="18" font-size="13">Fig. 2: CIDEr out of domain, {model}</text>']
    for g, dataset in enumerate(FIG2_DATASETS):
        x0 = 50 + g * group_w
        shapes.append(f'<text x="{x0}" y="{SVG_H + 40}" font-size="11">{dataset}</text>')
        for i, row in enumerate(rows):
            value = row[dataset] or 0.0
            height = (SVG_H - 20) * value / top
            shapes.append(f'<rect x="{x0 + i * SVG_BAR_W}" y="{SVG_H + 20 - height:.1f}" width="{SVG_BAR_W - 2}" '
                          f'height="{height:.1f}" fill="hsl({i * 360 // max(1, len(rows))},55%,50%)">'
                          f'<title>{strategy_label(row["strategy"])}: {value:.1f}</title></rect>')
    for i, row in enumerate(rows):
        y = 40 + i * 16
        shapes.append(f'<rect x="{width - 170}" y="{y - 9}" width="10" height="10" '
                      f'fill="hsl({i * 360 // max(1, len(rows))},55%,50%)"/>'
                      f'<text x="{width - 155}" y="{y}" font-size="11">{strategy_label(row["strategy"])}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{SVG_H + 60}">'
            + "".join(shapes) + "</svg>\n")


def write_report(plan) -> list[Path]:
    """tables.md (Tables 1-4), fig2_cider.csv and fig2_cider.svg in `<study>/results/`; returns their paths."""
    from captionlab import report

    gather_inputs(plan)
    results = plan.out / "results"
    results.mkdir(parents=True, exist_ok=True)
    embedded = plan.model == "embedded"
    label = report.EMBEDDED_LABEL if embedded else plan.model
    tables = report.render(plan.out, model_label=label, with_checks=embedded)
    rows = fig2_rows(plan.out)
    written = {"tables.md": f"# The study of {plan.model}\n\n{tables}", "fig2_cider.csv": fig2_csv(rows),
               "fig2_cider.svg": fig2_svg(rows, plan.model)}
    for name, text in written.items():
        atomic.write_text(results / name, text)
    atomic.write_json(results / "report.json", {"cells": [c.name for c in plan.cells]})  # what it covers
    return [results / name for name in written]

"""The Energy tab: the paper's Table 4 beside your runs' measured energy, each figure with its method."""

import gradio as gr
import pandas as pd

from captionlab.service import benchmarks, energy
from captionlab.service import runs as runs_service
from captionlab.service.catalog import TRAINABLE_STRATEGIES, strategy_label
from captionlab.service.settings import AppSettings
from captionlab.ui import charts

PAPER_COLUMNS = ["Strategy", "Params (printed)", "Params (method text)", "kWh all epochs", "kWh up to best", "Covers",
                 "Note"]
RUN_COLUMNS = ["Run", "Origin", "Model", "Strategy", "Params", "kWh all epochs", "kWh up to best", "Best epoch",
               "Method", "Covers", "Device"]
RUN_WIDTHS = ["12%", "7%", "10%", "11%", "8%", "8%", "8%", "5%", "14%", "8%", "9%"]  # names and 0.0008364 unbroken
COUNTED_KEYS = ("lora:all_linear", "dora:all_linear")  # the method text's literal LoRA/DoRA, counted beside


def _kwh(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _counted_frame(counts: dict | None, model: str) -> pd.DataFrame:
    if not counts:
        return pd.DataFrame(columns=["Strategy", f"Trainable params ({model}, counted by captionlab)"])
    total = counts.get("total")
    rows = [[_count_label(k), f"{counts[k]:,}" + (f" ({counts[k] / total:.4%})" if total else "")]
            for k in (*TRAINABLE_STRATEGIES, *COUNTED_KEYS) if k in counts]
    return pd.DataFrame(rows, columns=["Strategy", f"Trainable params ({model}, counted by captionlab)"])


def _count_label(key: str) -> str:
    name, _, targets = key.partition(":")
    return f"{strategy_label(name)} (all linear layers)" if targets else strategy_label(name)


def create_energy_tab(settings: AppSettings) -> None:
    """Lay out the Energy tab inside the current gr.Tab."""
    gr.Markdown("### The paper's Table 4 (LLaVA-v1.5-7B, COCO, four 64GB A100s, 4 epochs)")
    gr.Markdown(f"**Note:** {energy.PAPER_NOTE}\n\n{energy.LORA_TARGETS_NOTE}\n\n{energy.SCOPE_NOTE}")
    paper_table = gr.Dataframe(interactive=False, wrap=True, elem_id="energy-paper",
                               column_widths=["13%", "9%", "11%", "8%", "8%", "9%", "42%"])
    with gr.Accordion("Trainable parameters counted by captionlab on LLaVA-1.5-7B's config (no weights)", open=False):
        count_button = gr.Button("Count (builds the model on the meta device; takes a while)")
        counted = gr.Dataframe(interactive=False)
    gr.Markdown("### Your runs (energy.json of each run; measured = NVML (GPU only) and/or RAPL (CPU package, DRAM) "
                "counters, ESTIMATE otherwise; Covers: the parts each figure counts)")
    runs_table = gr.Dataframe(interactive=False, wrap=True, elem_id="energy-runs", column_widths=RUN_WIDTHS)
    runs_note = gr.Markdown()
    reload_button = gr.Button("Reload")
    bars = gr.Plot(label="Energy per strategy", elem_id="energy-bars")
    scatter = gr.Plot(label="CIDEr against kWh", elem_id="energy-scatter")
    scatter_note = gr.Markdown()

    def show():
        paper = energy.paper_table()
        runs = energy.run_energy_rows(settings.checkpoints)
        results, problems = benchmarks.all_rows(settings.checkpoints)
        note = ("" if runs else "*No run has written energy.json yet: train one in the Train tab.*") + \
            runs_service.registry_note()
        return (pd.DataFrame([[r[c] for c in PAPER_COLUMNS] for r in paper], columns=PAPER_COLUMNS),
                pd.DataFrame([[_kwh(r[c]) if c.startswith("kWh") else r[c] for c in RUN_COLUMNS] for r in runs],
                             columns=RUN_COLUMNS), note,
                charts.energy_bars(energy.energy_bars(paper, runs)),
                charts.quality_vs_energy(energy.quality_points(paper, runs, results)),
                "\n\n".join(filter(None, [energy.quality_note(runs, results), *(f"Warning: {p}" for p in problems)])),
                _counted_frame(energy.counted_parameters("llava-1.5-7b"), "llava-1.5-7b"))

    def on_count():
        return _counted_frame(energy.counted_parameters("llava-1.5-7b", compute=True), "llava-1.5-7b")

    outputs = [paper_table, runs_table, runs_note, bars, scatter, scatter_note, counted]
    gr.on(None, show, None, outputs, api_visibility="private")
    reload_button.click(show, None, outputs, api_visibility="private")
    count_button.click(on_count, None, counted, api_visibility="private")

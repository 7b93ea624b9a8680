"""Plotly figure builders for the app: each takes plain data from captionlab.service, returns a Figure."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

STRATEGY_COLOURS = {
    "Zero-shot": "#7f7f7f", "Prompt learning": "#1f77b4", "Prefix tuning": "#17becf", "LoRA": "#ff7f0e",
    "DoRA": "#d62728", "Full fine-tuning": "#2ca02c", "CLIP-Captioner": "#9467bd", "QLoRA (4-bit)": "#e377c2",
}
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.15))


def _colour(strategy: str) -> str:
    return STRATEGY_COLOURS.get(strategy, "#8c564b")


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    figure.update_layout(xaxis=dict(visible=False), yaxis=dict(visible=False), height=260, **LAYOUT)
    return figure


def cider_bars(points: list[dict], title: str = "CIDEr per dataset (as in the paper's Fig. 2)") -> go.Figure:
    """Grouped bars: datasets on x, one bar per strategy, one panel per (source, model)."""
    if not points:
        return empty_figure("no CIDEr scores to plot yet")
    groups = list(dict.fromkeys(p["group"] for p in points))
    figure = make_subplots(rows=len(groups), cols=1, subplot_titles=groups, shared_xaxes=False,
                           vertical_spacing=min(0.12, 0.5 / max(1, len(groups))))
    shown: set[str] = set()
    for row, group in enumerate(groups, start=1):
        for strategy in dict.fromkeys(p["strategy"] for p in points if p["group"] == group):
            mine = [p for p in points if p["group"] == group and p["strategy"] == strategy]
            figure.add_trace(go.Bar(x=[p["dataset"] for p in mine], y=[p["cider"] for p in mine], name=strategy,
                                    legendgroup=strategy, showlegend=strategy not in shown,
                                    marker_color=_colour(strategy),
                                    hovertemplate=f"{strategy}<br>%{{x}}: CIDEr %{{y:.1f}}<extra>{group}</extra>"),
                             row=row, col=1)
            shown.add(strategy)
        figure.update_yaxes(title_text="CIDEr", row=row, col=1)
    figure.update_layout(barmode="group", title=title, height=max(320, 260 * len(groups)), **LAYOUT)
    return figure


def generalisation_scatter(points: list[dict]) -> go.Figure:
    """In-domain CIDEr (COCO) on x, mean out-of-domain CIDEr on y: the generalisation trade-off.

    Colour is the strategy, marker shape the (source, model); hover for the numbers."""
    if not points:
        return empty_figure("needs COCO and at least one out-of-domain CIDEr per strategy")
    figure = go.Figure()
    symbols = ["circle", "diamond", "square", "triangle-up", "cross", "x", "star"]
    models = list(dict.fromkeys(f"{p['source']} · {p['model']}" for p in points))
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        mine = [p for p in points if p["strategy"] == strategy]
        names = [f"{p['source']} · {p['model']}" for p in mine]
        figure.add_trace(go.Scatter(
            x=[p["in_domain"] for p in mine], y=[p["out_of_domain"] for p in mine], mode="markers", name=strategy,
            marker=dict(size=13, color=_colour(strategy),
                        symbol=[symbols[models.index(n) % len(symbols)] for n in names],
                        line=dict(width=1, color="#333")),
            customdata=[[n, p["n_out"]] for n, p in zip(names, mine)],
            hovertemplate=(f"{strategy} · %{{customdata[0]}}<br>COCO CIDEr %{{x:.1f}}<br>"
                           "mean of %{customdata[1]} out-of-domain CIDEr %{y:.1f}<extra></extra>")))
    for model in models:  # one legend entry per marker shape
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=model,
                                    marker=dict(size=11, color="#bbb",
                                                symbol=symbols[models.index(model) % len(symbols)])))
    figure.update_layout(title="Generalisation trade-off: in-domain vs out-of-domain CIDEr",
                         xaxis_title="COCO CIDEr (in-domain)", yaxis_title="mean out-of-domain CIDEr",
                         height=520, **LAYOUT)
    return figure


def loss_curves(train: list[tuple[float, float]], val: list[tuple[float, float]]) -> go.Figure:
    """Training loss per step and validation loss per epoch."""
    if not train and not val:
        return empty_figure("no steps logged yet")
    figure = go.Figure()
    if train:
        figure.add_trace(go.Scatter(x=[s for s, _ in train], y=[v for _, v in train], mode="lines", name="train loss",
                                    line=dict(color="#1f77b4")))
    if val:
        figure.add_trace(go.Scatter(x=[s for s, _ in val], y=[v for _, v in val], mode="lines+markers",
                                    name="validation loss", line=dict(color="#d62728"), marker=dict(size=9)))
    figure.update_layout(title="Loss", xaxis_title="optimizer step", yaxis_title="token cross-entropy", height=340,
                         **LAYOUT)
    return figure


def energy_bars(bars: list[dict]) -> go.Figure:
    """kWh per strategy, all epochs and up to the best checkpoint: the paper's panel beside yours
    (each with its own scale: a 7B model on four A100s and a tiny one on a CPU differ by orders)."""
    if not bars:
        return empty_figure("no energy figures yet")
    panels = [("paper", [b for b in bars if b["source"].startswith("paper")]),
              ("yours", [b for b in bars if not b["source"].startswith("paper")])]
    panels = [(name, items) for name, items in panels if items]
    titles = ["the paper (4x A100, as printed)" if name == "paper" else "your runs" for name, _ in panels]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=titles)
    for column, (name, items) in enumerate(panels, start=1):
        labels = [b["strategy"] if name == "paper" else f"{b['strategy']}<br><sub>{b['source'][8:][:28]}</sub>"
                  for b in items]
        for key, label, style in (("kwh_all", "all epochs", dict()),
                                  ("kwh_best", "up to best checkpoint", dict(pattern_shape="/", opacity=0.55))):
            figure.add_trace(go.Bar(
                x=labels, y=[b[key] for b in items], name=label, legendgroup=label, showlegend=column == 1,
                marker=dict(color=[_colour(b["strategy"]) for b in items], **style),
                customdata=[b["method"] for b in items],
                hovertemplate=f"%{{x}}<br>%{{y:.4g}} kWh, {label}<br>%{{customdata}}<extra></extra>"), row=1, col=column)
        figure.update_yaxes(title_text="kWh", row=1, col=column)
    figure.update_layout(barmode="group", title="Training energy per strategy", height=440, **LAYOUT)
    return figure


def quality_vs_energy(points: list[dict]) -> go.Figure:
    """COCO CIDEr against kWh (all epochs), one marker per strategy and source."""
    if not points:
        return empty_figure("needs runs with energy.json and a COCO evaluation")
    figure = go.Figure()
    for source in dict.fromkeys(p["source"] for p in points):
        mine = [p for p in points if p["source"] == source]
        figure.add_trace(go.Scatter(
            x=[p["kwh"] for p in mine], y=[p["cider"] for p in mine], mode="markers+text", name=source,
            text=[p["strategy"] for p in mine], textposition="top center",
            marker=dict(size=13, color=[_colour(p["strategy"]) for p in mine],
                        symbol="circle" if source == "paper" else "diamond", line=dict(width=1, color="#333")),
            customdata=[p["method"] for p in mine],
            hovertemplate="%{text}<br>%{x:.4g} kWh<br>CIDEr %{y:.1f}<br>%{customdata}<extra></extra>"))
    spread = [p["kwh"] for p in points if p["kwh"]]
    log = spread and max(spread) / max(1e-12, min(spread)) > 1000
    figure.update_layout(title="Quality against energy", xaxis_title="kWh (all epochs)", yaxis_title="COCO CIDEr",
                         xaxis_type="log" if log else "linear", height=420, **LAYOUT)
    return figure

"""Plotly figure builders for the app: each takes plain data from captionlab.service, returns a Figure."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

STRATEGY_COLOURS = {
    "Zero-shot": "#7f7f7f", "Prompt learning": "#1f77b4", "Prefix tuning": "#17becf", "LoRA": "#ff7f0e",
    "DoRA": "#d62728", "Full fine-tuning": "#2ca02c", "CLIP-Captioner": "#9467bd", "QLoRA (4-bit)": "#e377c2",
}
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.15))
# scatter plots: the legend on the right, clear of the x axis title
SIDE_LEGEND = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50),
                   legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top"))
SMALL_BAR = 0.03  # a bar under this fraction of its panel's tallest is labelled with its value, so a 0 is seen
SHARED_POINT_SHIFT = 0.03  # of an axis' span: points drawn on the same spot are spread by this much
SYMBOLS = ["circle", "diamond", "square", "triangle-up", "cross", "x", "star"]


def _colour(strategy: str) -> str:
    return STRATEGY_COLOURS.get(strategy, "#8c564b")


def small_bar_labels(values: list[float | None], tallest: float) -> list[str]:
    """The value as text on bars too short to see (a 0 draws nothing), empty on the others."""
    return ["" if v is None or v > SMALL_BAR * tallest else f"{v:.1f}" for v in values]


def spread_shared_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points drawn where an earlier one is drawn, moved right by a step each, so that every marker shows (the
    hover keeps the true values)."""
    xs = [x for x, _ in points]
    step = SHARED_POINT_SHIFT * ((max(xs) - min(xs)) or 1.0) if xs else 0.0
    seen: dict[tuple[float, float], int] = {}
    out = []
    for x, y in points:
        spot = (round(x, 6), round(y, 6))
        count = seen.get(spot, 0)
        seen[spot] = count + 1
        out.append((x + count * step, y))
    return out


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
        tallest = max((p["cider"] or 0 for p in points if p["group"] == group), default=0)
        for strategy in dict.fromkeys(p["strategy"] for p in points if p["group"] == group):
            mine = [p for p in points if p["group"] == group and p["strategy"] == strategy]
            figure.add_trace(go.Bar(x=[p["dataset"] for p in mine], y=[p["cider"] for p in mine], name=strategy,
                                    legendgroup=strategy, showlegend=strategy not in shown,
                                    marker_color=_colour(strategy),
                                    text=small_bar_labels([p["cider"] for p in mine], tallest),
                                    textposition="outside", cliponaxis=False,
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
    symbols = SYMBOLS
    models = list(dict.fromkeys(f"{p['source']} · {p['model']}" for p in points))
    drawn = dict(zip(map(id, points), spread_shared_points([(p["in_domain"], p["out_of_domain"]) for p in points])))
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        mine = [p for p in points if p["strategy"] == strategy]
        names = [f"{p['source']} · {p['model']}" for p in mine]
        figure.add_trace(go.Scatter(
            x=[drawn[id(p)][0] for p in mine], y=[drawn[id(p)][1] for p in mine], mode="markers", name=strategy,
            marker=dict(size=13, color=_colour(strategy),
                        symbol=[symbols[models.index(n) % len(symbols)] for n in names],
                        line=dict(width=1, color="#333")),
            customdata=[[n, p["n_out"], p["in_domain"]] for n, p in zip(names, mine)],
            hovertemplate=(f"{strategy} · %{{customdata[0]}}<br>COCO CIDEr %{{customdata[2]:.1f}}<br>"
                           "mean of %{customdata[1]} out-of-domain CIDEr %{y:.1f}<extra></extra>")))
    for model in models:  # one legend entry per marker shape
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=model,
                                    marker=dict(size=11, color="#bbb",
                                                symbol=symbols[models.index(model) % len(symbols)])))
    figure.update_layout(title="Generalisation trade-off: in-domain vs out-of-domain CIDEr",
                         xaxis_title="COCO CIDEr (in-domain)", yaxis_title="mean out-of-domain CIDEr",
                         height=520, **SIDE_LEGEND)
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
        labels = distinct_labels([b["strategy"] for b in items])  # the run's name is in the hover and the table
        tallest = max((max(b["kwh_all"] or 0, b["kwh_best"] or 0) for b in items), default=0)
        for key, label, style in (("kwh_all", "all epochs", dict()),
                                  ("kwh_best", "up to best checkpoint", dict(pattern_shape="/", opacity=0.55))):
            figure.add_trace(go.Bar(
                x=labels, y=[b[key] for b in items], name=label, legendgroup=label, showlegend=column == 1,
                marker=dict(color=[_colour(b["strategy"]) for b in items], **style),
                text=small_bar_labels([b[key] for b in items], tallest), textposition="outside", cliponaxis=False,
                customdata=[[b["method"], b["source"]] for b in items],
                hovertemplate=(f"%{{x}} · %{{customdata[1]}}<br>%{{y:.4g}} kWh, {label}<br>%{{customdata[0]}}"
                               "<extra></extra>")), row=1, col=column)
        figure.update_yaxes(title_text="kWh", row=1, col=column)
        figure.update_xaxes(tickangle=0, automargin=True, row=1, col=column)
    figure.update_layout(barmode="group", title="Training energy per strategy", height=440, **LAYOUT)
    return figure


def distinct_labels(labels: list[str]) -> list[str]:
    """`labels` with repeats numbered (LoRA, LoRA (2)): bars on one category axis would otherwise stack."""
    out: list[str] = []
    for label in labels:
        name, count = label, 1
        while name in out:
            count += 1
            name = f"{label} ({count})"
        out.append(name)
    return out


def quality_vs_energy(points: list[dict]) -> go.Figure:
    """COCO CIDEr against kWh (all epochs): colour is the strategy, marker shape the source (the paper, your
    runs); names are in the legend and the hover rather than on the points, where they overlapped."""
    if not points:
        return empty_figure("needs runs with energy.json and a COCO evaluation")
    figure = go.Figure()
    kinds = list(dict.fromkeys("paper" if p["source"] == "paper" else "yours" for p in points))
    for strategy in dict.fromkeys(p["strategy"] for p in points):
        mine = [p for p in points if p["strategy"] == strategy]
        figure.add_trace(go.Scatter(
            x=[p["kwh"] for p in mine], y=[p["cider"] for p in mine], mode="markers", name=strategy,
            marker=dict(size=13, color=_colour(strategy), line=dict(width=1, color="#333"),
                        symbol=[SYMBOLS[kinds.index("paper" if p["source"] == "paper" else "yours")] for p in mine]),
            customdata=[[p["source"], p["method"]] for p in mine],
            hovertemplate=(f"{strategy} · %{{customdata[0]}}<br>%{{x:.4g}} kWh<br>CIDEr %{{y:.1f}}<br>"
                           "%{customdata[1]}<extra></extra>")))
    for kind in kinds:  # one legend entry per marker shape
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="the paper" if kind == "paper" else
                                    "your runs", marker=dict(size=11, color="#bbb", symbol=SYMBOLS[kinds.index(kind)])))
    spread = [p["kwh"] for p in points if p["kwh"]]
    log = spread and max(spread) / max(1e-12, min(spread)) > 1000
    figure.update_layout(title="Quality against energy", xaxis_title="kWh (all epochs)", yaxis_title="COCO CIDEr",
                         xaxis_type="log" if log else "linear", height=440, **SIDE_LEGEND)
    return figure

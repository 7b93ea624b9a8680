"""Plotly figures of the Arena tab: the win-rate matrix and the ratings beside CIDEr / CLIP-S (plain data in,
from `captionlab.service.arena.standings`)."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from captionlab.ui.charts import LAYOUT, STRATEGY_COLOURS, empty_figure


def win_rate_matrix(players: list[str], rates: list[list[float | None]], games: list[list[int]]) -> go.Figure:
    """Heatmap: row captioner's share of wins against the column captioner (ties half), games on hover."""
    if not players:
        return empty_figure("no votes yet: vote on a few matches above")
    text = [["–" if rate is None else f"{rate:.0%}" for rate in row] for row in rates]
    figure = go.Figure(go.Heatmap(
        z=[[None if rate is None else rate for rate in row] for row in rates], x=players, y=players, text=text,
        texttemplate="%{text}", customdata=games, zmin=0, zmax=1, colorscale="RdBu", colorbar=dict(title="wins"),
        hovertemplate="%{y} beat %{x} in %{z:.0%} of %{customdata} game(s)<extra></extra>"))
    figure.update_layout(title="Win rate of the row against the column (ties count half)", height=420,
                         xaxis=dict(title="against"), yaxis=dict(autorange="reversed"), **LAYOUT)
    return figure


def ratings_against_metrics(agreement: dict[str, list[dict]], correlation: dict[str, float | None]) -> go.Figure:
    """One panel per metric: each strategy's arena rating (95% interval) against its COCO score, with rho."""
    if not any(agreement.values()):
        return empty_figure("no strategy has both arena votes and a COCO CIDEr / CLIP-S yet")
    labels = list(agreement)
    titles = [f"{label}: Spearman ρ = {correlation[label]:+.2f}" if correlation.get(label) is not None
              else f"{label}: ρ needs 3 strategies" for label in labels]
    figure = make_subplots(rows=1, cols=len(labels), subplot_titles=titles)
    for col, label in enumerate(labels, start=1):
        for point in agreement[label]:
            figure.add_trace(go.Scatter(
                x=[point["value"]], y=[point["rating"]], mode="markers+text", text=[point["strategy"]],
                textposition="top center", name=point["strategy"], showlegend=False,
                marker=dict(size=11, color=STRATEGY_COLOURS.get(point["strategy"], "#8c564b")),
                error_y=dict(type="data", symmetric=False, array=[point["high"] - point["rating"]],
                             arrayminus=[point["rating"] - point["low"]]),
                hovertemplate=f"{point['strategy']}<br>{label} %{{x:.3g}}<br>rating %{{y:.0f}}<extra></extra>"),
                row=1, col=col)
        figure.update_xaxes(title_text=f"COCO {label}", row=1, col=col)
    figure.update_yaxes(title_text="arena rating (Elo scale)", row=1, col=1)
    figure.update_layout(title="Does CIDEr agree with people here?", height=420, **LAYOUT)
    return figure

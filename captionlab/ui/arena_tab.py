"""The Arena tab: two captions of one image by two captioners picked at random, names hidden and order random;
the user votes, then sees who wrote what. Below: the Bradley-Terry leaderboard, win rates, and whether CIDEr
and CLIP-S rank the strategies as the voters do. Layout only: the work is in `captionlab.service.arena`."""

from __future__ import annotations

import random
import uuid

import gradio as gr
import pandas as pd

from captionlab.service import arena, gallery
from captionlab.service.settings import AppSettings
from captionlab.ui import arena_charts

BOARD_COLUMNS = ["rank", "captioner", "rating", "95% interval", "votes", "wins", "losses", "ties", "both bad"]
VOTES = (("left", "Left is better"), ("tie", "Tie"), ("both_bad", "Both bad"), ("right", "Right is better"))
HIDDEN = "*Names hidden until you vote.*"


def voter_of(request: gr.Request | None, browser_id: str | None) -> str:
    """Who votes: the --auth user's name when the app has a login, else this browser's id."""
    user = getattr(request, "username", None) if request is not None else None
    return f"user:{user}" if user else f"browser:{browser_id or 'unknown'}"


def _board_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=BOARD_COLUMNS) if rows else pd.DataFrame(columns=BOARD_COLUMNS)


def create_arena_tab(settings: AppSettings) -> None:
    """Lay out the Arena tab inside the current gr.Tab."""
    items, gallery_source = gallery.load_gallery(settings.checkpoints)
    gr.Markdown("A blind test of the captioners: pick an image, read two captions written by two captioners drawn "
                "at random (which is which is hidden, and the sides are random), and say which is better. The names "
                "are shown after your vote. Votes go into the results database, one per person, image and pair.")
    voter_id = gr.BrowserState("", storage_key="captionlab-arena-voter")
    match = gr.State(None)
    with gr.Row(equal_height=True):
        with gr.Column(scale=2):
            upload = gr.Image(type="filepath", sources=["upload"], label="Upload an image", height=220,
                              elem_id="arena-upload")
            with gr.Row():
                upload_button = gr.Button("Match on the upload", elem_id="arena-run-upload")
                sample_button = gr.Button("Random dataset image", elem_id="arena-sample")
        with gr.Column(scale=3):
            examples = gr.Gallery(value=[(str(item.path), item.domain) for item in items],
                                  label=f"Or click an example: {gallery_source}", columns=5, height=260,
                                  allow_preview=False, buttons=[], elem_id="arena-gallery")
    status = gr.Markdown(elem_id="arena-status")
    with gr.Row(equal_height=True):
        shown = gr.Image(label="The image", interactive=False, height=260, elem_id="arena-image", scale=1)
        with gr.Column(scale=3):
            with gr.Row(equal_height=True):
                left = gr.Textbox(label="Left caption", interactive=False, lines=3, elem_id="arena-left")
                right = gr.Textbox(label="Right caption", interactive=False, lines=3, elem_id="arena-right")
            with gr.Row():
                buttons = [gr.Button(text, elem_id=f"arena-vote-{outcome}", variant="primary", interactive=False)
                           for outcome, text in VOTES]
            revealed = gr.Markdown(HIDDEN, elem_id="arena-reveal")
            next_button = gr.Button("Another pair on this image", elem_id="arena-next")
    with gr.Accordion("Ratings", open=True):
        method = gr.Markdown(elem_id="arena-method")
        refresh = gr.Button("Refresh ratings", elem_id="arena-refresh")
        board = gr.Dataframe(_board_frame([]), interactive=False, label="Leaderboard (Bradley-Terry, Elo scale)",
                             elem_id="arena-board")
        with gr.Row():
            matrix = gr.Plot(label="Win rates", elem_id="arena-winrates")
            agreement = gr.Plot(label="Ratings against CIDEr and CLIP-S", elem_id="arena-agreement")
        agreement_text = gr.Markdown(elem_id="arena-agreement-note")

    def start(path: str | None, key: str | None, browser_id: str, request: gr.Request, note: str = ""):
        disabled = [gr.update(interactive=False)] * len(VOTES)
        if not path or not key:
            return ("Error: Pick an image first.", None, None, "", "", HIDDEN, *disabled)
        try:
            chosen = arena.new_match(settings, path, key, voter_of(request, browser_id))
        except arena.ArenaError as exc:
            return (f"Error: {exc}", None, path, "", "", HIDDEN, *disabled)
        message = f"Which caption is better? {note}".strip()
        return (message, chosen.to_state(), path, chosen.left_caption, chosen.right_caption, HIDDEN,
                *[gr.update(interactive=True)] * len(VOTES))

    def on_upload(path, browser_id, request: gr.Request):
        try:
            key = arena.upload_key(path) if path else None
        except arena.ArenaError as exc:
            return (f"Error: {exc}", None, None, "", "", HIDDEN, *[gr.update(interactive=False)] * len(VOTES))
        return start(path, key, browser_id, request)

    def on_example(event: gr.SelectData, browser_id, request: gr.Request):
        path, key = arena.gallery_image(settings, event.index)
        return start(path, key, browser_id, request)

    def on_sample(browser_id, request: gr.Request):
        try:
            path, key, where = arena.dataset_sample(settings, random.Random())
        except arena.ArenaError as exc:
            return (f"Error: {exc}", None, None, "", "", HIDDEN, *[gr.update(interactive=False)] * len(VOTES))
        return start(path, key, browser_id, request, note=f"({where})")

    def on_next(state, browser_id, request: gr.Request):
        if not state:
            return start(None, None, browser_id, request)
        return start(state["image_path"], state["image"], browser_id, request)

    def make_vote(outcome: str):
        def vote(state, browser_id, request: gr.Request):
            disabled = [gr.update(interactive=False)] * len(VOTES)
            try:
                text = arena.cast_vote(arena.Match.from_state(state), outcome, voter_of(request, browser_id))
            except arena.ArenaError as exc:
                return (f"Error: {exc}", gr.skip(), *disabled)
            return ("Vote recorded. Pick another image, or another pair on this one.", text, *disabled)
        return vote

    def show_standings():
        result = arena.standings(settings)
        note = (f"{result.total_votes} vote(s) on {settings.model_label}. Method: {result.method}; 95% intervals "
                f"from bootstrap resamples of the votes.")
        return (note, _board_frame(result.board),
                arena_charts.win_rate_matrix(result.players, result.rates, result.games),
                arena_charts.ratings_against_metrics(result.agreement, result.correlation),
                arena.agreement_note(result))

    def ensure_voter(browser_id: str):
        return browser_id or uuid.uuid4().hex

    match_outputs = [status, match, shown, left, right, revealed, *buttons]
    standings_outputs = [method, board, matrix, agreement, agreement_text]
    private = dict(api_visibility="private")
    upload_button.click(on_upload, [upload, voter_id], match_outputs, **private)
    examples.select(on_example, [voter_id], match_outputs, **private)
    sample_button.click(on_sample, [voter_id], match_outputs, **private)
    next_button.click(on_next, [match, voter_id], match_outputs, **private)
    for (outcome, _), button in zip(VOTES, buttons):
        button.click(make_vote(outcome), [match, voter_id], [status, revealed, *buttons], **private).then(
            show_standings, None, standings_outputs, **private)
    refresh.click(show_standings, None, standings_outputs, **private)
    gr.on(None, ensure_voter, [voter_id], [voter_id], **private)
    gr.on(None, show_standings, None, standings_outputs, **private)

"""The Compare tab: captions of every strategy and the CLIP-Captioner side by side, with scores.

Also registers the `caption` API endpoint (one uploaded image in, {strategy key: caption} out, plus
{"errors": {strategy key: why}} when a served strategy could not caption):

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"), api_name="/caption")
    Client(...).predict(handle_file("cat.jpg"), ["my-run-20261207-101500"], api_name="/caption_with_runs")

It opens only files the app received as uploads (`captionlab.safety.uploads`), never a server path.
"""

import re
from html import escape

import gradio as gr
import pandas as pd
from gradio import FileData
from gradio.context import Context, LocalContext
from gradio.utils import get_upload_folder

from captionlab.safety.uploads import NotAnUpload, uploaded_path
from captionlab.service import compare, drill_images, gallery
from captionlab.service.settings import AppSettings

TABLE_COLUMNS = ["image", "strategy", "caption", "words", "latency_ms", "CIDEr", "CLIP-S"]
TABLE_HEADERS = ["Image", "Strategy", "Caption", "Words", compare.LATENCY_LABEL, "CIDEr", "CLIP-S"]
CELL_FORMATS = {"latency_ms": "{:.0f}", "CIDEr": "{:.1f}", "CLIP-S": "{:.3f}"}  # one precision per column
GREYED = "color: #9a9a9a; font-style: italic"
RUNS_LABEL = "Also caption with your runs (finished, or with a best checkpoint)"
NO_RUNS_LABEL = "Your runs: none has finished or kept a best checkpoint yet (train one in the Train tab)"
EMBEDDED_EXAMPLES = 2  # gallery images shown beside the note on what the embedded models know


def _uploaded_files() -> set[str]:
    """gradio's record of the files this app received through its /upload route (the running Blocks')."""
    blocks = LocalContext.blocks.get(None) or Context.root_block
    return set(getattr(blocks, "upload_file_set", ()))


def _strategies_markdown(settings: AppSettings) -> str:
    lines = [f"**Model:** `{settings.model_label}` · **checkpoints:** `{settings.checkpoints or '—'}`", ""]
    for slot in compare.discover_strategies(settings):
        lines.append(f"- {'ready' if slot.available else 'not available'}: **{slot.label}**"
                     + (f": {slot.reason}" if slot.reason else f" (`{slot.artifact}`)" if slot.artifact else ""))
    return "\n".join(lines)


def _cell(row: dict, column: str):
    if column == "caption" and row.get("cut"):  # unfinished at the token limit: say so where it is read
        return f"{row['caption']} {compare.CUT_MARK}"
    value = row[column]
    if column == "image":  # a long file name wraps after its _ and - (a zero-width space), not inside a part
        return re.sub(r"([_-])", "\\1\u200b", value)
    if column in CELL_FORMATS and value is not None:
        text = CELL_FORMATS[column].format(value)
        return f"({text})" if column == "CLIP-S" and row.get("clip_note") else text  # greyed by _table
    return "" if value is None else value


def _table(result: compare.CompareResult | None):
    """The rows as a table; CLIP-S cells the service flags as not meaningful are greyed."""
    rows = result.rows if result else []
    frame = pd.DataFrame([[_cell(r, c) for c in TABLE_COLUMNS] for r in rows], columns=TABLE_HEADERS)
    if not any(r.get("clip_note") for r in rows):
        return frame
    greyed = [bool(r.get("clip_note")) for r in rows]
    return frame.style.apply(lambda column: [GREYED if flag else "" for flag in greyed], subset=["CLIP-S"])


def _embedded_note(result: compare.CompareResult) -> str:
    """Said above the captions of uploads that the embedded models captioned, with why CLIP-S is greyed."""
    if not result.out_of_world:
        return ""
    reason = next((r["clip_note"] for r in result.rows if r.get("clip_note")), "")
    return (f"\n\n**About {', '.join(result.out_of_world)}:** {compare.EMBEDDED_WORLD_NOTE}"
            + (f" CLIP-S in grey, in parentheses, is {reason}." if reason else ""))


def _known_examples_html(items: list[gallery.GalleryItem]) -> str:
    """Gallery images with a reference caption each: what the embedded models do know."""
    figures = []
    for item in items:
        uri = drill_images.thumbnail_uri(item.path, size=256)
        if uri:
            figures.append(f'<figure><img src="{uri}" alt="{escape(item.id)}">'
                           f"<figcaption>{escape(item.references[0])}</figcaption></figure>")
    return f'<div class="known-examples">{"".join(figures)}</div>'


def _run_choices() -> list[tuple[str, str]]:
    return [(run.label, run.run_id) for run in compare.discover_runs()]


def _references_markdown(result: compare.CompareResult) -> str:
    if not result.references:
        return "*No references for these images: CIDEr needs a gallery example; CLIP-Score needs none.*"
    parts = []
    for name, refs in result.references.items():
        parts.append(f"**References for {name}**\n" + "\n".join(f"- {r}" for r in refs))
    return "\n\n".join(parts)


def _notes_markdown(result: compare.CompareResult) -> str:
    return "\n".join(f"- {note}" for note in result.notes)


def create_compare_tab(settings: AppSettings) -> None:
    """Lay out the Compare tab inside the current gr.Tab."""
    items, gallery_source = gallery.load_gallery(settings.checkpoints)
    corpus = {item.id: list(item.references) for item in items}

    gr.Markdown("Upload one or more images, or click an example of the embedded caption world, to see every "
                "personalization strategy caption it. Examples carry reference captions, so their captions are "
                "scored (CIDEr); CLIP-Score needs no references. The first request's ms per image include "
                "loading the models (a note says how long).")
    if settings.is_embedded:
        with gr.Row(elem_id="compare-embedded-note"):
            with gr.Column(scale=3):
                gr.Markdown(f"**What these models know.** {compare.EMBEDDED_WORLD_NOTE} Two examples of the world "
                            f"they do know, with a reference caption of each:")
            with gr.Column(scale=2):
                gr.HTML(_known_examples_html(items[:EMBEDDED_EXAMPLES]), elem_id="compare-known-examples")
    with gr.Row(equal_height=True):
        with gr.Column(scale=2):
            uploads = gr.File(file_count="multiple", label="Images to caption", height=200, elem_id="compare-upload")
            # filled by the page's load event (below), so that a run finished since the app started is offered
            runs = gr.CheckboxGroup([], label="Your runs", elem_id="compare-runs")
            caption_button = gr.Button("Caption uploaded images", variant="primary", elem_id="compare-run")
        with gr.Column(scale=3):
            examples = gr.Gallery(value=[(str(item.path), item.domain) for item in items],
                                  label=f"Or click an example: {gallery_source}", columns=5, height=290,
                                  allow_preview=False, buttons=[], elem_id="compare-gallery")
    status = gr.Markdown(elem_id="compare-status")
    shown = gr.Gallery(label="Captioned images", columns=10, height=150, object_fit="contain", allow_preview=False,
                       preview=False, fit_columns=False, elem_id="compare-shown",
                       buttons=[])
    table = gr.Dataframe(value=_table(None), label="Captions side by side", wrap=True, interactive=False,
                         max_height=720, column_widths=["15%", "14%", "40%", "6%", "9%", "7%", "9%"],
                         elem_id="compare-table")
    with gr.Row():
        references = gr.Markdown()
        notes = gr.Markdown()
    with gr.Accordion("Strategies served", open=False):
        gr.Markdown(_strategies_markdown(settings))

    def run(files, run_ids, refs=None, use_corpus=False):
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        try:
            result = compare.compare_images(settings, paths, refs, corpus if use_corpus else None,
                                            runs=list(run_ids or []))
        except compare.ImageError as exc:
            return (f"**Error:** {exc}", [], _table(None), "", "")
        message = f"Captioned {len(result.names)} image(s) with {len(result.captions)} captioner(s)."
        if not result.captions:
            message = "**Note:** no captioner can run yet: the table says why, and what to do, for each one."
        if result.skipped:
            message += "\n\n**Skipped:** " + "; ".join(result.skipped)
        message += _embedded_note(result)
        shown_images = list(zip(result.files, result.names))  # each image over the label its rows carry
        return message, shown_images, _table(result), _references_markdown(result), _notes_markdown(result)

    def run_uploads(files, run_ids):
        return run(files, run_ids)

    def run_example(run_ids, event: gr.SelectData):
        item = items[event.index]
        return run([str(item.path)], run_ids, [list(item.references)], use_corpus=True)

    def refresh_runs():
        choices = _run_choices()
        return gr.update(choices=choices, value=[], label=RUNS_LABEL if choices else NO_RUNS_LABEL)

    outputs = [status, shown, table, references, notes]
    caption_button.click(run_uploads, inputs=[uploads, runs], outputs=outputs, api_visibility="private")
    examples.select(run_example, inputs=runs, outputs=outputs, api_visibility="private")
    # triggers=None and no inputs: on every page load
    gr.on(None, refresh_runs, None, runs, api_visibility="private")

    def caption_uploaded(image: FileData, runs: list[str] | None) -> dict:
        try:  # only a file this app received as an upload: a bare path would read any file on the server
            path = uploaded_path(image, _uploaded_files(), get_upload_folder())
        except NotAnUpload as exc:
            raise gr.Error(str(exc)) from None
        try:
            return compare.caption_image(settings, path, runs)
        except compare.ImageError as exc:
            raise gr.Error(str(exc)) from None

    def caption(image: FileData) -> dict:
        """Caption one uploaded image with every available strategy: {strategy key: caption}, and
        {"errors": {key: why}} for one that failed to load or caption."""
        return caption_uploaded(image, None)

    def caption_with_runs(image: FileData, runs: list[str]) -> dict:
        """Caption one uploaded image with every available strategy and the workspace runs named by id:
        {strategy key, or run:<id> for a run: caption}, and {"errors": {key: why}}."""
        return caption_uploaded(image, runs)

    # two endpoints, not one with an optional argument: gradio refuses a call that sends fewer values than the
    # function takes, so a plain HTTP client's one-value `caption` call must stay one value
    gr.api(caption, api_name="caption")
    gr.api(caption_with_runs, api_name="caption_with_runs")

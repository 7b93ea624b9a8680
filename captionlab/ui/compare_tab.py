"""The Compare tab: captions of every strategy and the CLIP-Captioner side by side, with scores.

Also registers the `caption` API endpoint (one uploaded image in, {strategy key: caption} out, plus
{"errors": {strategy key: why}} when a served strategy could not caption):

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"), api_name="/caption")

It opens only files the app received as uploads (`captionlab.safety.uploads`), never a server path.
"""

import gradio as gr
import pandas as pd
from gradio import FileData
from gradio.context import Context, LocalContext
from gradio.utils import get_upload_folder

from captionlab.safety.uploads import NotAnUpload, uploaded_path
from captionlab.service import compare, gallery
from captionlab.service.settings import AppSettings

TABLE_COLUMNS = ["image", "strategy", "caption", "words", "latency_ms", "CIDEr", "CLIP-S"]
TABLE_HEADERS = ["Image", "Strategy", "Caption", "Words", compare.LATENCY_LABEL, "CIDEr", "CLIP-S"]


def _uploaded_files() -> set[str]:
    """gradio's record of the files this app received through its /upload route (the running Blocks')."""
    blocks = LocalContext.blocks.get(None) or Context.root_block
    return set(getattr(blocks, "upload_file_set", ()))


def _strategies_markdown(settings: AppSettings) -> str:
    lines = [f"**Model:** `{settings.model_label}` · **checkpoints:** `{settings.checkpoints or '—'}`", ""]
    for slot in compare.discover_strategies(settings):
        lines.append(f"- {'✅' if slot.available else '⚠️'} **{slot.label}**"
                     + (f": {slot.reason}" if slot.reason else f" (`{slot.artifact}`)" if slot.artifact else ""))
    return "\n".join(lines)


def _cell(row: dict, column: str):
    if column == "caption" and row.get("cut"):  # unfinished at the token limit: say so where it is read
        return f"{row['caption']} {compare.CUT_MARK}"
    return row[column]


def _table(result: compare.CompareResult | None) -> pd.DataFrame:
    rows = result.rows if result else []
    return pd.DataFrame([[_cell(r, c) for c in TABLE_COLUMNS] for r in rows], columns=TABLE_HEADERS)


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
                "scored (CIDEr); CLIP-Score needs no references.")
    with gr.Row(equal_height=True):
        with gr.Column(scale=2):
            uploads = gr.File(file_count="multiple", label="Images to caption", height=200, elem_id="compare-upload")
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
                         max_height=720, column_widths=["11%", "12%", "47%", "6%", "9%", "7%", "8%"],
                         elem_id="compare-table")
    with gr.Row():
        references = gr.Markdown()
        notes = gr.Markdown()
    with gr.Accordion("Strategies served", open=False):
        gr.Markdown(_strategies_markdown(settings))

    def run(files, refs=None, use_corpus=False):
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        try:
            result = compare.compare_images(settings, paths, refs, corpus if use_corpus else None)
        except compare.ImageError as exc:
            return (f"⚠️ {exc}", [], _table(None), "", "")
        message = f"Captioned {len(result.names)} image(s) with {len(result.captions)} captioner(s)."
        if not result.captions:
            message = "⚠️ No captioner can run yet: the table says why, and what to do, for each one."
        if result.skipped:
            message += "\n\n⚠️ Skipped: " + "; ".join(result.skipped)
        shown_images = list(zip(result.files, result.names))  # each image over the label its rows carry
        return message, shown_images, _table(result), _references_markdown(result), _notes_markdown(result)

    def run_uploads(files):
        return run(files)

    def run_example(event: gr.SelectData):
        item = items[event.index]
        return run([str(item.path)], [list(item.references)], use_corpus=True)

    outputs = [status, shown, table, references, notes]
    caption_button.click(run_uploads, inputs=uploads, outputs=outputs, api_visibility="private")
    examples.select(run_example, inputs=None, outputs=outputs, api_visibility="private")

    def caption(image: FileData) -> dict:
        """Caption one uploaded image with every available strategy: {strategy key: caption}, and
        {"errors": {strategy key: why}} for a served strategy that failed to load or caption."""
        try:  # only a file this app received as an upload: a bare path would read any file on the server
            path = uploaded_path(image, _uploaded_files(), get_upload_folder())
        except NotAnUpload as exc:
            raise gr.Error(str(exc)) from None
        try:
            return compare.caption_image(settings, path)
        except compare.ImageError as exc:
            raise gr.Error(str(exc)) from None

    gr.api(caption, api_name="caption")

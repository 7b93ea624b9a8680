"""Assembles the app's tabs: Compare, Train, Benchmarks, Energy (`python app.py` launches it)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from captionlab.safety.paths import allow_root
from captionlab.service import gallery
from captionlab.service.settings import AppSettings, embedded_settings
from captionlab.ui.arena_tab import create_arena_tab
from captionlab.ui.benchmarks_tab import create_benchmarks_tab
from captionlab.ui.compare_tab import create_compare_tab
from captionlab.ui.energy_tab import create_energy_tab
from captionlab.ui.train_tab import create_train_tab

TITLE = "captionlab: personalizing multimodal LLMs for image captioning"
UPLOAD_CACHE_AGE_S = 3600  # gradio's cache of uploads (and shown images) keeps a file this long ...
UPLOAD_CACHE_SWEEP_S = 600  # ... looking for older ones this often; without it the cache only ever grew


def build_app(settings: AppSettings | None = None) -> gr.Blocks:
    """The app for `settings` (default: the embedded study). Loads no model: captioners load on first use."""
    settings = settings or embedded_settings()
    for folder in (settings.model, settings.checkpoints):  # what the app serves, forms may name
        allow_root(folder)
    with gr.Blocks(title="captionlab", delete_cache=(UPLOAD_CACHE_SWEEP_S, UPLOAD_CACHE_AGE_S)) as demo:
        gr.Markdown(f"## {TITLE}\nCan multimodal LLMs replace classic captioners, and which way of personalizing "
                    f"them adapts them to COCO-style captions while keeping their generality? "
                    f"Serving **{settings.model_label}**"
                    + (" (the embedded miniature study)" if settings.is_embedded else ""))
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                create_compare_tab(settings)
            with gr.Tab("Train", id="train"):
                create_train_tab(settings)
            with gr.Tab("Benchmarks", id="benchmarks"):
                create_benchmarks_tab(settings)
            with gr.Tab("Energy", id="energy"):
                create_energy_tab(settings)
            with gr.Tab("Arena", id="arena"): create_arena_tab(settings)  # noqa: E701
    return demo


def allowed_paths(settings: AppSettings) -> list[str]:
    """The only folders outside the working directory the app may serve files from: the gallery's."""
    return [str(Path(gallery.gallery_dir(settings.checkpoints)).resolve())]

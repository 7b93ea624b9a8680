"""The app's look: the theme (fonts the page ships, at weights whose files are complete) and a little CSS.

Gradio's default theme declares Source Sans Pro and IBM Plex Mono at weights 400 and 600, but the 600 files it
ships are small subsets: bold text then drew some capitals (A, B, ...) from a fallback font, so headings looked
set in small capitals. The 700 files are complete, so the theme declares 400 and 700 (600 resolves to 700).
Nothing is fetched from outside: the fonts are the app's own static files.
"""

from __future__ import annotations

import gradio as gr

FONT_WEIGHTS = (400, 700)

APP_CSS = """
/* tables: wrap at spaces, break a word only when it alone is wider than its column */
#compare-table td, #compare-table th, #bench-table td, #bench-table th, #energy-runs td, #energy-paper td {
    word-break: normal !important; overflow-wrap: break-word !important; hyphens: none !important;
}
#bench-table th, #compare-table th { white-space: normal !important; }
#bench-table th { font-size: 12px !important; }
.drill-table { border-collapse: collapse; width: 100%; }
.drill-table th, .drill-table td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left;
    vertical-align: top; }
.drill-table ol { margin: 0; padding-left: 1.2em; }
.drill-thumb { max-width: 96px; max-height: 96px; }
.drill-id { color: #666; font-size: 0.85em; }
.known-examples { display: flex; gap: 12px; }
.known-examples figure { margin: 0; width: 50%; }
.known-examples img { width: 100%; max-height: 150px; object-fit: contain; }
.known-examples figcaption { font-size: 0.9em; color: #444; }
"""


def app_theme() -> gr.themes.Base:
    """The default theme with complete font files at every weight it uses."""
    return gr.themes.Default(
        font=(gr.themes.LocalFont("Source Sans Pro", weights=FONT_WEIGHTS), "ui-sans-serif", "system-ui",
              "sans-serif"),
        font_mono=(gr.themes.LocalFont("IBM Plex Mono", weights=FONT_WEIGHTS), "ui-monospace", "Consolas",
                   "monospace"))

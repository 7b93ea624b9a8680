"""The Benchmarks tab: tables like the paper's Tables 1-3, Fig. 2's CIDEr bars, the generalisation
trade-off, a per-image drill-down of your evaluations, and evaluation jobs."""

import re
from html import escape

import gradio as gr
import pandas as pd

from captionlab.service import benchmarks, domains, drill_images, eval_launch, jobs
from captionlab.service.catalog import COMPARE_ORDER, DATASETS, FIG2_DATASETS, PAPER_TABLES, strategy_label
from captionlab.service.settings import AppSettings
from captionlab.ui import charts

SOURCES = {"Yours and the paper's": ("yours", "paper"), "The paper's": ("paper",), "Yours": ("yours",)}
DRILL_EMPTY = "<p><em>Click a row of your results above.</em></p>"
JOB_COLUMNS = ["job", "state", "progress", "ETA", "last log line"]  # captionlab.service.jobs.list_jobs's keys
JOBS_POLL_SECONDS = 2.0


def _frame(records: list[dict], columns: list[str]) -> pd.DataFrame:
    """`records` as a table; with none, an empty table that keeps its column names (an empty DataFrame without
    columns is drawn by gradio with headers 1, 2, 3)."""
    return pd.DataFrame(records) if records else pd.DataFrame(columns=columns)


def _jobs_frame() -> pd.DataFrame:
    return _frame(jobs.list_jobs(), JOB_COLUMNS)


def _jobs_view(finished_seen: list[str]) -> tuple[pd.DataFrame, str, list[str], bool]:
    """The jobs table, the slots line, the finished jobs' ids and whether one finished since `finished_seen`."""
    from captionlab.service import capacity

    rows = jobs.list_jobs()
    finished = sorted(row["job"] for row in rows if row["state"] == "finished")
    try:
        slots = capacity.slots().describe()
    except ValueError as exc:
        slots = str(exc)
    return _frame(rows, JOB_COLUMNS), slots, finished, bool(set(finished) - set(finished_seen))


LABEL_WIDTHS = [5, 10, 12]  # % of the table: Source, Model, Strategy (a long run label wraps inside its column)


def table_widths(n_columns: int) -> list[str]:
    """Column widths that keep every column on screen at 1400 px: the label columns fixed, the scores sharing the
    rest (with Table 3's 12 score columns, a header such as "TextCaps B-4" still fits whole words)."""
    scores = n_columns - len(LABEL_WIDTHS)
    if scores <= 0:
        return []
    share = (100 - sum(LABEL_WIDTHS)) / scores
    return [f"{w}%" for w in LABEL_WIDTHS] + [f"{share:.2f}%"] * scores


def _score_text(value) -> str:
    return "" if value is None else f"{value:.3f}"


DRILL_LABELS = ("domain", "hallucinated")  # text columns of benchmarks.drilldown's records, where present


def caption_html(caption: str) -> str:
    """A drill-down caption as HTML: CHAIR's hallucinated words (marked **word** by the service) highlighted."""
    return re.sub(r"\*\*(.+?)\*\*", r'<mark class="hallucinated">\1</mark>', escape(caption))


def drill_html(records: list[dict], dataset: str, split: str | None) -> tuple[str, str]:
    """The drill-down as an HTML table: each image as a thumbnail beside its caption, per-image scores and all
    its references; and a note when the images cannot be shown (the dataset is not on this machine)."""
    if not records:
        return "<p><em>No per-image captions for this row.</em></p>", ""
    paths, note = drill_images.image_paths(dataset, split)
    metrics = [key for key in records[0] if key.endswith("(image)")]
    labels = [key for key in DRILL_LABELS if key in records[0]]  # nocaps' domain, CHAIR's hallucinated objects
    head = "".join(f"<th>{escape(h)}</th>" for h in ["Image", "Caption", *labels, *metrics, "References"])
    lines = []
    for index, record in enumerate(records):
        path = paths.get(str(record["image"]))
        uri = drill_images.thumbnail_uri(path) if path and index < drill_images.MAX_THUMBNAILS else None
        picture = f'<img src="{uri}" alt="{escape(str(record["image"]))}" class="drill-thumb"><br>' if uri else ""
        refs = "".join(f"<li>{escape(r)}</li>" for r in record.get("references") or [])
        cells = [f'{picture}<span class="drill-id">{escape(str(record["image"]))}</span>',
                 caption_html(record.get("caption", "")), *(escape(str(record.get(k) or "")) for k in labels),
                 *(_score_text(record.get(m)) for m in metrics),
                 f"<ol>{refs}</ol>" if refs else "<em>none recorded</em>"]
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    if paths and len(records) > drill_images.MAX_THUMBNAILS:
        note = f"thumbnails for the first {drill_images.MAX_THUMBNAILS} images only"
    return f'<table class="drill-table"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>', note


def _load_rows(settings: AppSettings) -> tuple[list[dict], str]:
    rows, notes = benchmarks.all_rows(settings.checkpoints)
    if not any(r["source"] == benchmarks.YOURS for r in rows):
        notes.append("No evaluations of yours yet: run one below (or `python -m captionlab evaluate`); "
                     "the embedded study's results appear here once `python -m train zoo` has built them.")
    return rows, "\n".join(f"- {n}" for n in notes)


def create_benchmarks_tab(settings: AppSettings) -> None:
    """Lay out the Benchmarks tab inside the current gr.Tab."""
    gr.Markdown("Scores are on the paper's scale (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE x100; CLIP-S unscaled). "
                "**Bold**: best of a model (per source); ★: best of the source overall. *Yours*: the evaluations in "
                "this workspace and those shipped with the checkpoints (the embedded study); a row of another "
                "checkpoint names its run or folder after the strategy, and one scored on part of its split (the "
                "first N images, or images left out as missing or broken) says how many (never marked best). †: a "
                "CLIP-S from another CLIP than the paper's ViT-B/32 (named above the table), ranked only with its own "
                "kind. CHAIR-i / CHAIR-s: the share of object mentions / of captions naming an object the image "
                "does not have (Rohrbach et al. 2018, percent, lower is better). Click one of your rows to see its "
                "per-image captions and scores.")
    with gr.Row():
        table_choice = gr.Radio(list(PAPER_TABLES), value=list(PAPER_TABLES)[0], label="Table", scale=3)
        source_choice = gr.Radio(list(SOURCES), value=list(SOURCES)[0], label="Rows", scale=2)
        reload_button = gr.Button("Reload results", scale=1)
    notes = gr.Markdown()
    table = gr.Dataframe(label="Results", interactive=False, wrap=True, datatype="markdown",
                         elem_id="bench-table", max_height=900)
    keys = gr.State([])
    with gr.Accordion("nocaps by domain", open=True, visible=False) as domain_box:
        gr.Markdown(domains.domain_note())
        domain_table = gr.Dataframe(_frame([], domains.DOMAIN_COLUMNS), interactive=False, wrap=True,
                                    elem_id="bench-nocaps-domains", max_height=500)
    with gr.Accordion("Per-image drill-down", open=True):
        drill_note = gr.Markdown("*Click a row of your results above.*")
        drill = gr.HTML(DRILL_EMPTY, elem_id="bench-drill", max_height=520)
    with gr.Row():
        fig2 = gr.Plot(label="CIDEr per dataset (Fig. 2)", elem_id="bench-fig2")
        tradeoff = gr.Plot(label="Generalisation trade-off", elem_id="bench-tradeoff")
    with gr.Accordion("Run an evaluation", open=False):
        gr.Markdown(jobs.evaluate_help())
        with gr.Row():
            eval_strategy = gr.Dropdown([(strategy_label(k), k) for k in COMPARE_ORDER], value="zero_shot",
                                        label="Strategy")
            eval_dataset = gr.Dropdown(DATASETS, value="coco", label="Dataset", allow_custom_value=True)
            eval_checkpoint = gr.Textbox(
                "", label="Checkpoint: run id (or its start), run folder or artifact (empty: zero-shot)")
            # a Textbox, not a Number: gradio draws an empty Number as 0, which the job refuses ("at least 1")
            eval_limit = gr.Textbox("", label="Only the first N images (empty: all)", elem_id="bench-eval-limit")
        with gr.Row():
            # no precision: gradio would round 1.5 to 2 unseen; validate_gpus refuses it instead
            eval_gpus = gr.Number(1, label="GPUs", precision=None, minimum=1, maximum=eval_launch.MAX_GPUS,
                                  info=eval_launch.gpu_help(), elem_id="bench-eval-gpus")
            slurm = eval_launch.slurm_available()  # offered only where `sbatch` exists
            eval_where = gr.Radio(["This machine", "Slurm"], value="This machine", label="Run on", visible=slurm,
                                  elem_id="bench-eval-where")
            eval_partition = gr.Textbox("", label="Slurm partition", visible=slurm, elem_id="bench-eval-partition")
        with gr.Row():
            eval_button = gr.Button("Start evaluation job", variant="primary")
            stop_job_id = gr.Textbox("", label="Job to stop (click one below)", elem_id="bench-stop-job", scale=3)
            stop_job_button = gr.Button("Stop job", variant="stop", elem_id="bench-stop-job-button")
        eval_message = gr.Markdown()
        slots_note = gr.Markdown(elem_id="bench-slots")
        eval_jobs = gr.Dataframe(_frame([], JOB_COLUMNS), interactive=False, wrap=True, elem_id="bench-jobs",
                                 label="Evaluation jobs (newest first, updated every few seconds; results above "
                                       "reload when one finishes)")
        finished_seen = gr.State(None)
        jobs_timer = gr.Timer(JOBS_POLL_SECONDS)

    def show(table_name: str, source_name: str):
        rows, message = _load_rows(settings)
        rows = [r for r in rows if r["source"] in SOURCES[source_name]]
        datasets = PAPER_TABLES[table_name]
        columns, cells, row_keys = benchmarks.table_rows(rows, datasets)
        clip_note = benchmarks.clip_encoder_note([r for r in rows if r["dataset"] in datasets])
        length_note = domains.generation_note([r for r in rows if r["dataset"] in datasets])
        message = "\n".join(part for part in (message, f"- {clip_note}" if clip_note else "",
                                               f"- {length_note}" if length_note else "") if part)
        frame = gr.update(value=pd.DataFrame(cells, columns=columns), column_widths=table_widths(len(columns)))
        bars = charts.cider_bars(benchmarks.cider_series(rows, FIG2_DATASETS))
        scatter = charts.generalisation_scatter(benchmarks.generalisation_points(rows))
        by_domain = domains.domain_rows(rows) if "nocaps" in datasets else []
        return (frame, row_keys, message, bars, scatter, gr.update(visible=bool(by_domain)),
                _frame(by_domain, domains.DOMAIN_COLUMNS))

    def on_select(event: gr.SelectData, table_name: str, row_keys: list[dict]):
        row, column = (event.index if isinstance(event.index, (list, tuple)) else (event.index, 0))
        if not 0 <= row < len(row_keys):
            return gr.skip(), gr.skip()
        line = row_keys[row]
        datasets = PAPER_TABLES[table_name]
        dataset = benchmarks.dataset_for_column(column, datasets)
        chosen = line["rows"].get(dataset) or next(iter(line["rows"].values()), None)
        if chosen is None:
            return "*Nothing evaluated for this row.*", DRILL_EMPTY
        records, where = benchmarks.drilldown(chosen)
        html, images_note = drill_html(records, chosen["dataset"], chosen.get("split"))
        title = (f"**{line['model']} · {strategy_label(chosen['strategy'])} · {chosen['dataset']}**: {where}"
                 + (f" ({images_note})" if images_note else ""))
        return title, html

    def on_evaluate(strategy: str, dataset: str, checkpoint: str, limit, gpus, where: str, partition: str):
        message = jobs.start_evaluation(settings, (strategy or "").strip(), (dataset or "").strip(),
                                        (checkpoint or "").strip() or None, limit, gpus=gpus,
                                        slurm_partition=(partition or "") if where == "Slurm" else None)
        return message, _jobs_frame()

    def on_jobs_tick(seen: list[str] | None, table_name: str, source_name: str):
        """The jobs table and slots line; the results, charts and all, reloaded when a job has just finished."""
        frame, slots, finished, new_finish = _jobs_view(seen or [])
        if seen is None or not new_finish:  # the first tick only learns what had finished before this page
            return (frame, slots, finished, *[gr.skip()] * len(outputs))
        return (frame, slots, finished, *show(table_name, source_name))

    def on_pick_job(event: gr.SelectData, frame: pd.DataFrame):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return str(frame.iloc[row]["job"]) if 0 <= row < len(frame) else gr.skip()

    def on_stop_job(job_id: str):
        job_id = (job_id or "").strip()
        if not job_id:
            return "Error: click a job in the table first", _jobs_frame()
        try:
            return jobs.stop_job(job_id), _jobs_frame()
        except ValueError as exc:
            return f"Error: {exc}", _jobs_frame()

    outputs = [table, keys, notes, fig2, tradeoff, domain_box, domain_table]
    # triggers=None: on every page load and whenever the table or source choice changes.
    gr.on(None, show, [table_choice, source_choice], outputs, api_visibility="private")
    reload_button.click(show, [table_choice, source_choice], outputs, api_visibility="private")
    table.select(on_select, [table_choice, keys], [drill_note, drill], api_visibility="private")
    eval_button.click(on_evaluate, [eval_strategy, eval_dataset, eval_checkpoint, eval_limit, eval_gpus, eval_where,
                                    eval_partition],
                      [eval_message, eval_jobs], api_visibility="private")
    jobs_timer.tick(on_jobs_tick, [finished_seen, table_choice, source_choice],
                    [eval_jobs, slots_note, finished_seen, *outputs], api_visibility="private", show_progress="hidden")
    eval_jobs.select(on_pick_job, eval_jobs, stop_job_id, api_visibility="private")
    stop_job_button.click(on_stop_job, stop_job_id, [eval_message, eval_jobs], api_visibility="private")

"""The Train tab: a form that launches a fine-tuning run, then its live progress, curves, energy and log.

The run is the trainer CLI in its own process (started through captionlab.service.runs); this tab
only reads the run folders and the runs registry, polled by a gr.Timer, so a page reload or an app
restart loses nothing.
"""

import html

import gradio as gr
import pandas as pd

from captionlab.service import runs
from captionlab.service.study import study_status_markdown
from captionlab.service.catalog import strategy_label, trainable_strategies
from captionlab.service.settings import AppSettings
from captionlab.ui import charts

POLL_SECONDS = 2.0
STATE_COLOURS = {"finished": "#2ca02c", "failed": "#d62728", "crashed": "#d62728", "stopped": "#ff7f0e"}
# The log follows its newest line, as a terminal does, until the reader scrolls up (back at the end, it follows
# again). Gradio's own Textbox autoscroll (6.x) only keeps a box at its end if it was there already, and the Train
# tab's log is filled before the tab is first shown, so it opened at its oldest line with the newest out of sight.
FOLLOW_LOG_END_JS = """() => requestAnimationFrame(() => {
    const box = document.querySelector('#train-log textarea');
    if (!box) return;
    if (!box.dataset.followsEnd) {
        box.addEventListener('scroll', () => {
            box.dataset.followsEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 8 ? 'yes' : 'no';
        });
    }
    if (box.dataset.followsEnd !== 'no') box.scrollTop = box.scrollHeight;
    box.dataset.followsEnd = box.dataset.followsEnd || 'yes';
})"""
RUN_HEADERS = ["run", "strategy", "model", "dataset", "state", "progress", "best val loss", "kWh"]


def _progress_html(view: runs.RunView | None) -> str:
    if view is None:
        return "<div class='cl-progress-empty'>No run selected: launch one, or click a run in the list below.</div>"
    percent = 100 * view.fraction
    total = view.total_steps or "?"
    eta = f" · ETA {runs.format_duration(view.eta_s)}" if view.eta_s is not None else ""
    colour = STATE_COLOURS.get(view.state, "#1f77b4")
    return (f"<div id='train-progress' data-step='{view.step}' data-state='{html.escape(view.state)}'>"
            f"<div style='display:flex;justify-content:space-between;font-size:0.95em'>"
            f"<b>{html.escape(view.run_id)}</b><span>{html.escape(view.state)} · step {view.step}/{total} "
            f"({percent:.0f}%){eta}</span></div>"
            f"<div style='background:#e5e7eb;border-radius:6px;height:16px;margin-top:4px'>"
            f"<div style='width:{percent:.1f}%;background:{colour};height:16px;border-radius:6px'></div></div></div>")


def _energy_markdown(view: runs.RunView) -> str:
    """The energy so far (the runs table's kWh) and, when it differs, the part in completed epochs."""
    figures = view.energy
    label = "energy so far" if view.running or view.resumable else "energy"
    if figures.so_far_kwh is None:
        return f"**{label}:** — ({view.energy_method})"
    through = f" through step {figures.through_step}" if figures.through_step is not None else ""
    text = f"**{label}:** {runs.format_kwh(figures.so_far_kwh)} kWh{through} ({view.energy_method})"
    if figures.has_partial_epoch:
        epochs = figures.completed_epochs
        text += (f" · **in completed epochs{f' ({epochs})' if epochs else ''}:** "
                 f"{runs.format_kwh(figures.completed_kwh)} kWh")
    if figures.initial_validation_kwh:
        initial = runs.format_kwh(figures.initial_validation_kwh)
        text += f" · includes the untrained model's validation pass, {initial} kWh, which Table 4 leaves out"
    return text


def _stats_markdown(view: runs.RunView) -> str:
    best = "—" if view.best_val_loss is None else f"{view.best_val_loss:.4f} (epoch {view.best_epoch})"
    lines = [f"**Elapsed:** {runs.format_duration(view.elapsed_s)} · {_energy_markdown(view)} · "
             f"**best validation loss:** {best}"]
    if view.message:
        lines.append(f"**Message:** {view.message}")
    if view.skipped_metrics_lines:
        lines.append(f"Warning: {view.skipped_metrics_lines} broken line(s) of metrics.jsonl skipped: the curves leave "
                     f"them out")
    return "\n\n".join(lines)


def _defaults_markdown(model: str, strategy: str, values: dict) -> str:
    """Where the form's values (`runs.form_defaults`) come from: the recipe it starts from, and how that recipe
    departs from the paper."""
    recipe = runs.recipe_for(model, strategy)
    if recipe is None:
        return "*The form starts from the paper's settings (no recipe for this model and strategy).*"
    labels = {key: label for key, label, _ in runs.FORM_FIELDS}
    differs = [f"{labels[key]} {_shown(values[key])} (paper: {_shown(runs.PAPER_DEFAULTS[key])})"
               for key in labels if key != "micro_batch_size" and values[key] != runs.PAPER_DEFAULTS[key]]
    # (the micro-batch only splits the batch for memory: the paper does not set it, and the updates are the same)
    text = f"*The form starts from the recipe `{recipe}` (`train/recipes/{recipe}.yaml`)"
    return text + (f"; it departs from the paper in: {', '.join(differs)}.*" if differs else ", the paper's settings.*")


def _shown(value) -> str:
    return "all" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _optional(value) -> str:
    return "" if value is None else str(value)


def _number_field(value, label: str, elem_id: str, minimum: float | None = None) -> gr.Number:
    """A number field that passes on what was typed: no `precision`, even for whole numbers, since gradio rounds
    to it before the callback (epochs 1.5 would become 2 unseen); runs.validate_form refuses the fraction instead."""
    return gr.Number(value, label=label, precision=None, minimum=minimum, elem_id=elem_id)


def _runs_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r[h] for h in RUN_HEADERS] for r in rows], columns=RUN_HEADERS)


def create_train_tab(settings: AppSettings) -> None:
    """Lay out the Train tab inside the current gr.Tab."""
    default_model = settings.model
    defaults = runs.form_defaults(default_model, "lora")

    gr.Markdown("Fine-tune a model with one personalization strategy. The paper's recipe: SGD, cosine schedule "
                "2e-2 → 1e-5, batch 32 by gradient accumulation, 4 epochs, best checkpoint by validation loss; the "
                "form starts from this model's recipe for the strategy (named below the fields). The run is its own "
                "process: it keeps going if you close this page.")
    with gr.Row():
        model = gr.Dropdown(runs.model_choices(default_model), value=default_model, label="Model",
                            allow_custom_value=True, elem_id="train-model")
        strategy = gr.Dropdown([(strategy_label(k), k) for k in trainable_strategies()], value="lora",
                               label="Strategy", elem_id="train-strategy")
        dataset = gr.Dropdown(runs.dataset_choices(), value="coco", label="Dataset (name or FORMAT:PATH)",
                              allow_custom_value=True, elem_id="train-dataset")
        gpus = _number_field(1, "GPUs", "train-gpus", minimum=1)
        name = gr.Textbox("", label="Run name (optional)", elem_id="train-name")
    with gr.Row():
        fields = {}
        for key, label, _ in runs.FORM_FIELDS:
            elem_id = f"train-{key.replace('_', '-')}"
            if runs.PAPER_DEFAULTS[key] is None:  # optional: empty means all
                fields[key] = gr.Textbox(_optional(defaults[key]), label=f"{label} (empty: all)", elem_id=elem_id)
            else:
                fields[key] = _number_field(defaults[key], label, elem_id)
    defaults_note = gr.Markdown(_defaults_markdown(default_model, "lora", defaults), elem_id="train-defaults")
    with gr.Row():
        preview_button = gr.Button("Preview command")
        launch_button = gr.Button("Launch training", variant="primary", elem_id="train-launch")
    form_message = gr.Markdown(elem_id="train-message")
    command = gr.Textbox(label="Equivalent shell command", interactive=False, lines=1, buttons=["copy"],
                         elem_id="train-command")

    gr.Markdown("### Run")
    with gr.Row():
        run_id = gr.Textbox("", label="Watching run (click a run below)", scale=4, elem_id="train-run-id")
        stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id="train-stop")
        resume_button = gr.Button("Resume", scale=1, elem_id="train-resume")
    progress = gr.HTML(_progress_html(None))
    stats = gr.Markdown(elem_id="train-stats")
    with gr.Row():
        curves = gr.Plot(charts.empty_figure("no run selected"), label="Loss curves", elem_id="train-curves")
        log = gr.Textbox(label="Log (last lines)", interactive=False, lines=16, max_lines=16, autoscroll=True,
                         elem_id="train-log")
    runs_table = gr.Dataframe(_runs_frame([]), label="All runs (newest first; click one to watch it)",
                              interactive=False, wrap=True, elem_id="train-runs")
    timer = gr.Timer(POLL_SECONDS)

    field_list = [fields[key] for key, _, _ in runs.FORM_FIELDS]

    def read_form(model_value, strategy_value, dataset_value, gpus_value, name_value, *values) -> runs.TrainForm:
        return runs.TrainForm(model=model_value or "", strategy=strategy_value or "", dataset=dataset_value or "",
                              values=dict(zip([k for k, _, _ in runs.FORM_FIELDS], values)),
                              gpus=1 if gpus_value is None else gpus_value, name=name_value or "")

    form_inputs = [model, strategy, dataset, gpus, name, *field_list]

    def on_preview(*values):
        try:
            return "", runs.preview(read_form(*values))
        except runs.FormError as exc:
            return f"**Error:** {exc}", ""

    def on_launch(*values):
        form = read_form(*values)
        try:
            line = runs.preview(form)
            new_id = runs.launch(form)
        except (runs.FormError, runs.LaunchError) as exc:
            return f"**Error:** {exc}", gr.skip(), gr.skip()
        return runs.launched_message(new_id), line, new_id

    def on_defaults(model_value, strategy_value):
        model_value, strategy_value = model_value or default_model, strategy_value or "lora"
        values = runs.form_defaults(model_value, strategy_value)
        return [_optional(values[key]) if runs.PAPER_DEFAULTS[key] is None else values[key]
                for key, _, _ in runs.FORM_FIELDS] + [_defaults_markdown(model_value, strategy_value, values)]

    def refresh(current: str):
        all_runs = runs.list_runs()
        table = _runs_frame(runs.runs_table(all_runs))
        selected = current.strip() or (all_runs[0]["run_id"] if all_runs else "")
        if not selected:
            return ("", _progress_html(None), "", gr.skip(), "", table, gr.update(interactive=False),
                    gr.update(interactive=False))
        try:
            view = runs.run_view(selected)
        except KeyError as exc:
            return selected, _progress_html(None), f"**Error:** {exc.args[0]}", gr.skip(), "", table, \
                gr.update(interactive=False), gr.update(interactive=False)
        return (selected, _progress_html(view), runs.registry_note() + _stats_markdown(view),
                charts.loss_curves(view.train_curve, view.val_curve),
                view.log_tail, table, gr.update(interactive=view.running), gr.update(interactive=view.resumable))

    def on_pick(event: gr.SelectData, table: pd.DataFrame):
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return str(table.iloc[row]["run"]) if 0 <= row < len(table) else gr.skip()

    def on_stop(current: str):
        try:
            return f"⏹ {runs.stop(current.strip())}"
        except runs.LaunchError as exc:
            return f"**Error:** {exc}"

    def on_resume(current: str):
        try:
            return f"▶ {runs.resume(current.strip())}"
        except runs.LaunchError as exc:
            return f"**Error:** {exc}"

    with gr.Accordion("Studies (python -m train study): each step's state", open=False):
        study_panel = gr.Markdown(study_status_markdown, elem_id="train-studies")  # read at each page load
        study_refresh = gr.Button("Refresh", size="sm")
    watch_outputs = [run_id, progress, stats, curves, log, runs_table, stop_button, resume_button]
    preview_button.click(on_preview, form_inputs, [form_message, command], api_visibility="private")
    launch_button.click(on_launch, form_inputs, [form_message, command, run_id], api_visibility="private").then(
        refresh, run_id, watch_outputs, api_visibility="private")
    gr.on([model.change, strategy.change], on_defaults, [model, strategy], [*field_list, defaults_note],
          api_visibility="private")
    runs_table.select(on_pick, runs_table, run_id, api_visibility="private").then(
        refresh, run_id, watch_outputs, api_visibility="private")
    stop_button.click(on_stop, run_id, form_message, api_visibility="private").then(
        refresh, run_id, watch_outputs, api_visibility="private")
    resume_button.click(on_resume, run_id, form_message, api_visibility="private").then(
        refresh, run_id, watch_outputs, api_visibility="private")
    timer.tick(refresh, run_id, watch_outputs, api_visibility="private", show_progress="hidden")
    log.change(None, js=FOLLOW_LOG_END_JS, api_visibility="private")
    study_refresh.click(study_status_markdown, None, study_panel, api_visibility="private")

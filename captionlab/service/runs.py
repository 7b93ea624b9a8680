"""Training runs for the Train tab: the form, its validation, launching, and a run's live progress.

The form is a recipe (`train/recipes/<model>/<strategy>.yaml`) plus the fields the user changed,
as `key=value` overrides; the launcher validates the whole config again and starts the trainer
(`python -m train run --run-dir DIR`) as its own process. Everything shown about a run is read
from its folder (status.json, metrics.jsonl, energy.json, log.txt) and the runs registry, so the
view survives a page reload or an app restart.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from captionlab import paths
from captionlab.service.catalog import trainable_strategies
from captionlab.training.launcher import LaunchError  # noqa: F401  (the UI catches it as runs.LaunchError)
from captionlab.training.energy import completed_run_kwh, energy_so_far_kwh

MAX_GPUS = 64  # one node's worth, and then some: the launcher runs one accelerate job on one machine
NO_METHOD_YET = "method not reported yet: the trainer records it in energy.json after the first epoch"

# The form's fields: (config key, label, kind). Defaults come from the recipe, else the paper's.
FORM_FIELDS = [
    ("lr_max", "max learning rate", float),
    ("lr_min", "min learning rate", float),
    ("batch_size", "batch size", int),
    ("micro_batch_size", "micro-batch size", int),
    ("epochs", "epochs", int),
    ("max_train_images", "max training images", int),
    ("max_val_images", "max validation images", int),
]
PAPER_DEFAULTS = {"lr_max": 2e-2, "lr_min": 1e-5, "batch_size": 32, "micro_batch_size": 8, "epochs": 4,
                  "max_train_images": None, "max_val_images": None}


class FormError(ValueError):
    """A form value that cannot be used; the message starts with the field's name."""


@dataclass(frozen=True)
class TrainForm:
    """What the Train tab submits."""

    model: str
    strategy: str
    dataset: str
    values: dict  # FORM_FIELDS key -> value (None for an empty optional field)
    gpus: int = 1
    name: str = ""


# --- choices and defaults ----------------------------------------------------------------------


def model_choices(current: str | None = None) -> list[str]:
    """Registry models (and the served model when it is a folder or an id)."""
    from captionlab.models.registry import list_models

    names = list_models()
    if current and current not in names:
        names.append(current)
    return names


def dataset_choices() -> list[str]:
    """Dataset names in the default datasets config (the embedded world's), when it exists."""
    from captionlab.data.datasets import default_config_path, load_config

    path = default_config_path()
    if not path.is_file():
        return ["coco"]
    try:
        return sorted(load_config(path))
    except Exception:
        return ["coco"]


def recipe_for(model: str, strategy: str) -> str | None:
    """The recipe the form starts from: <model>/<strategy>, else any recipe for that strategy."""
    model_key = Path(model).name if Path(model).is_absolute() else model
    exact = paths.RECIPES_DIR / model_key / f"{strategy}.yaml"
    if exact.is_file():
        return f"{model_key}/{strategy}"
    fallback = sorted(paths.RECIPES_DIR.glob(f"*/{strategy}.yaml"))
    return f"{fallback[0].parent.name}/{strategy}" if fallback else None


def recipe_values(recipe: str | None) -> dict:
    """The recipe's key: value settings (no validation; that is the launcher's job)."""
    if recipe is None:
        return {}
    path = paths.RECIPES_DIR / f"{recipe}.yaml"
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def form_defaults(model: str, strategy: str) -> dict:
    """Field values for the form: the recipe's, else the paper's."""
    values = recipe_values(recipe_for(model, strategy))
    return {key: values.get(key, PAPER_DEFAULTS[key]) for key, _, _ in FORM_FIELDS}


# --- validation, preview, launch ---------------------------------------------------------------


def _number(key: str, label: str, kind: type, raw) -> int | float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if PAPER_DEFAULTS[key] is None:
            return None
        raise FormError(f"{label}: a value is required")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FormError(f"{label}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise FormError(f"{label}: {raw!r} is not a finite number")
    if kind is int:
        if not value.is_integer():
            raise FormError(f"{label}: {raw!r} must be a whole number")
        return int(value)
    return value


def validate_form(form: TrainForm) -> tuple[str, list[str]]:
    """(recipe, overrides) for the launcher, or FormError naming the first bad field."""
    from captionlab.data.readers import FORMATS
    from captionlab.safety.paths import PathNotAllowed, check_dataset, check_model

    if form.strategy not in trainable_strategies():
        raise FormError(f"strategy: choose one of {', '.join(trainable_strategies())} (zero-shot trains nothing)")
    try:  # model folders and FORMAT:PATH datasets only inside the allowed roots (captionlab.safety.paths)
        model = check_model(form.model, model_choices())
        dataset = check_dataset(form.dataset, dataset_choices(), FORMATS)
    except PathNotAllowed as exc:
        raise FormError(str(exc)) from None
    values = {key: _number(key, label, kind, form.values.get(key)) for key, label, kind in FORM_FIELDS}
    checks = [
        ("max learning rate", values["lr_max"] > 0, "must be positive"),
        ("min learning rate", 0 <= values["lr_min"] <= values["lr_max"], "must be between 0 and the max learning rate"),
        ("batch size", values["batch_size"] >= 1, "must be at least 1"),
        ("micro-batch size", 1 <= values["micro_batch_size"] <= values["batch_size"],
         "must be between 1 and the batch size"),
        ("epochs", values["epochs"] >= 1, "must be at least 1"),
        ("max training images", values["max_train_images"] is None or values["max_train_images"] >= 1,
         "must be at least 1 (or empty for all)"),
        ("max validation images", values["max_val_images"] is None or values["max_val_images"] >= 1,
         "must be at least 1 (or empty for all)"),
    ]
    for label, ok, why in checks:
        if not ok:
            raise FormError(f"{label}: {why}")
    try:
        gpus = float(form.gpus)
    except (TypeError, ValueError):
        raise FormError(f"GPUs: {form.gpus!r} is not a whole number") from None
    if not math.isfinite(gpus) or not gpus.is_integer():
        raise FormError(f"GPUs: {form.gpus!r} is not a whole number")
    if not 1 <= gpus <= MAX_GPUS:
        raise FormError(f"GPUs: must be between 1 and {MAX_GPUS}")
    recipe = recipe_for(model, form.strategy)
    if recipe is None:
        raise FormError(f"strategy: no recipe for {form.strategy} in {paths.RECIPES_DIR}")
    base = recipe_values(recipe)
    wanted = {"model": model, "strategy": form.strategy, "dataset": dataset, **values}
    overrides = [f"{key}={_yaml_scalar(value)}" for key, value in wanted.items() if base.get(key) != value]
    return recipe, overrides


def _yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def preview(form: TrainForm) -> str:
    """The shell line that starts the same run (the launcher's own preview)."""
    from captionlab.training.launcher import preview_command

    recipe, overrides = validate_form(form)
    return preview_command(recipe, overrides, gpus=int(form.gpus), name=form.name.strip() or None)


def launch(form: TrainForm, trainer_cmd: list[str] | None = None) -> str:
    """Start the run; returns its id. FormError / launcher.LaunchError carry the user's message."""
    from captionlab.service import capacity
    from captionlab.training.launcher import launch_run

    recipe, overrides = validate_form(form)
    with capacity.starting:
        try:
            slot_free = capacity.slots().free > 0
        except ValueError as exc:  # a bad cap setting
            raise FormError(str(exc)) from None
        info = launch_run(recipe, overrides, name=form.name.strip() or None, gpus=int(form.gpus),
                          trainer_cmd=trainer_cmd, start=slot_free)
    return info.run_id


def launched_message(run_id: str) -> str:
    """What the Train tab says after Launch: started, or waiting for a slot under the cap on concurrent jobs."""
    from captionlab.service import capacity
    from captionlab.training import launcher, runs_db

    row = runs_db.get_run(run_id)
    if row is not None and launcher.is_waiting(row):
        return f"Queued **{run_id}**: it starts when a slot frees ({capacity.slots().describe()})"
    return f"Started **{run_id}**"


def stop(run_id: str) -> str:
    from captionlab.training.launcher import stop_run

    row = stop_run(run_id)
    return f"run {run_id}: {row['state']}"


def resume(run_id: str) -> str:
    from captionlab.training.launcher import resume_run

    info = resume_run(run_id)
    return f"run {info.run_id} resumed (pid {info.pid or info.slurm_job_id})"


# --- watching ----------------------------------------------------------------------------------


def refresh_registry() -> None:
    """Mark the runs whose trainer died while the app was down as crashed (the launcher's refresh)."""
    from captionlab.training.launcher import refresh_runs

    refresh_runs()


def list_runs() -> list[dict]:
    """Every run, newest first, with live progress (crashed runs noticed on the way)."""
    from captionlab.service import capacity
    from captionlab.training.launcher import list_runs_with_status

    try:
        capacity.start_waiting()  # runs and jobs that waited for a slot start as slots free
    except ValueError:
        pass  # a bad cap setting: Launch says so; the list still shows
    return list_runs_with_status()


def registry_note() -> str:
    """What an automatic rebuild of the runs registry did in this process (it could not be read), or ''."""
    from captionlab import db

    return "".join(f"Note: {note}\n\n" for note in db.rebuild_notes[-1:])


def runs_table(runs: list[dict]) -> list[dict]:
    """One display row per run."""
    rows = []
    for run in runs:
        step, total = run.get("step"), run.get("total_steps")
        rows.append({
            "run": run["run_id"], "strategy": run.get("strategy") or "", "model": run.get("model") or "",
            "dataset": run.get("dataset") or "", "state": run.get("live_state") or run.get("state"),
            "progress": f"{step or 0}/{total}" if total else "",
            "best val loss": None if run.get("best_val_loss") is None else round(run["best_val_loss"], 4),
            "kWh": _kwh_text(_listed_energy(run).so_far_kwh, run.get("energy_method")),
        })
    return rows


def _kwh_text(kwh: float | None, method: str | None) -> str:
    if kwh is None:
        return ""
    return f"{format_kwh(kwh)} ({method or 'method pending'})"


def _listed_energy(run: dict) -> RunEnergy:
    return run_energy(run.get("energy_kwh_completed"), run.get("energy_epochs_completed"),
                      run.get("energy_j_logged"), run.get("energy_step_logged"),
                      run.get("energy_kwh_initial_validation"))


@dataclass(frozen=True)
class RunEnergy:
    """A run's energy, the same in the runs table and the stats line: so far, and the part in completed epochs.

    energy.json holds whole epochs only (every process's meter, as the paper's Table 4 counts them); each
    metrics row holds the energy up to its step (the main process's meter). A run stopped or watched mid-epoch
    has used more than its completed epochs: `so_far_kwh` is the larger of the two, `completed_kwh` the first.
    The untrained model's validation pass before epoch 1 (`initial_validation_kwh`) is in `so_far_kwh` but not in
    `completed_kwh`, as Table 4 leaves it out.
    """

    so_far_kwh: float | None
    through_step: int | None  # the step so_far_kwh was logged at (None: it is the completed epochs' total)
    completed_kwh: float | None
    completed_epochs: int | None
    initial_validation_kwh: float | None = None

    @property
    def has_partial_epoch(self) -> bool:
        """Whether the energy so far includes steps after the last completed epoch (so the figures differ)."""
        completed = completed_run_kwh(self.completed_kwh, self.initial_validation_kwh)
        return completed is not None and self.so_far_kwh is not None and (
            format_kwh(self.so_far_kwh) != format_kwh(completed))


def run_energy(completed_kwh: float | None, completed_epochs: int | None, logged_j: float | None,
               logged_step: int | None, initial_validation_kwh: float | None = None) -> RunEnergy:
    """Both figures of a run's energy from energy.json's totals and the newest metrics row's energy_j."""
    so_far = energy_so_far_kwh(completed_kwh, logged_j, initial_validation_kwh)
    figures = RunEnergy(so_far, None, completed_kwh, completed_epochs, initial_validation_kwh)
    # "through step N" only where the log adds what the completed epochs do not hold, as printed
    if so_far is not None and (completed_kwh is None or figures.has_partial_epoch):
        return dataclasses.replace(figures, through_step=logged_step)
    return figures


def format_kwh(kwh: float) -> str:
    """kWh as every Train tab figure prints it (4 significant digits)."""
    return f"{kwh:.4g}"


@dataclass
class RunView:
    """Everything the Train tab shows about one run."""

    run_id: str
    state: str
    message: str
    step: int
    total_steps: int | None
    fraction: float
    eta_s: float | None
    elapsed_s: float | None
    train_curve: list[tuple[float, float]]  # (step, loss)
    val_curve: list[tuple[float, float]]  # (step, val loss)
    lr_curve: list[tuple[float, float]]
    energy_kwh: float | None  # energy so far: energy.so_far_kwh
    energy_method: str
    energy: RunEnergy
    best_epoch: int | None
    best_val_loss: float | None
    log_tail: str
    resumable: bool
    running: bool
    skipped_metrics_lines: int = 0  # broken lines of metrics.jsonl left out of the curves


def run_view(run_id: str, log_lines: int = 40) -> RunView:
    """Progress, curves, energy and log of one run, read from its folder."""
    from captionlab.training import runs_db
    from captionlab.training.run_folder import RunFolder

    row = runs_db.get_run(run_id)
    if row is None:
        raise KeyError(f"no run with id {run_id!r}")
    folder = RunFolder(Path(row["run_dir"]))
    status, energy = folder.read_status(), folder.read_energy()
    metrics, skipped_lines = folder.read_metrics_counted()
    steps = [m for m in metrics if "event" not in m and "loss" in m]
    vals = [m for m in metrics if m.get("event") == "val"]
    step = int(status.get("step") or (steps[-1]["step"] if steps else 0))
    total = status.get("total_steps")
    fraction = min(1.0, step / total) if total else 0.0
    elapsed = steps[-1].get("elapsed_s") if steps else None
    state = status.get("state") or row["state"]
    if row["state"] in ("stopped", "crashed", "failed", "finished") and state in ("running", "queued"):
        state = row["state"]  # the registry noticed what the folder could not say
    eta = None
    if state == "running" and elapsed and step and total and step < total:
        eta = elapsed / step * (total - step)
    logged = next((m for m in reversed(metrics) if m.get("energy_j") is not None), {})
    figures = run_energy(energy.get("kwh_all_epochs"), energy.get("epochs"), logged.get("energy_j"), logged.get("step"),
                         energy.get("initial_validation_kwh"))
    kwh = figures.so_far_kwh
    method = (energy.get("label") or energy.get("method") or status.get("energy_label")
              or status.get("energy_method") or "")
    return RunView(
        run_id=run_id, state=state, step=step,
        message=(status.get("message") if "message" in status else row.get("message")) or "",
        total_steps=total, fraction=fraction, eta_s=eta, elapsed_s=elapsed,
        train_curve=[(m["step"], m["loss"]) for m in steps],
        val_curve=[(m.get("step", 0), m["val_loss"]) for m in vals if m.get("val_loss") is not None],
        lr_curve=[(m["step"], m["lr"]) for m in steps if m.get("lr") is not None],
        energy_kwh=kwh, energy_method=method or ("not measured yet" if kwh is None else NO_METHOD_YET),
        energy=figures,
        best_epoch=status.get("best_epoch"), best_val_loss=status.get("best_val_loss"),
        log_tail=folder.log_tail(log_lines), resumable=state in ("stopped", "crashed", "failed"),
        running=state in ("running", "queued"), skipped_metrics_lines=skipped_lines,
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

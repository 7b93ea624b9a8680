"""`python -m train study status` and the app's study panel: the studies on disk and each step's state.

Read from each study folder's study.json (what was asked) and the state of its steps (`captionlab.study.state`);
no plan is rebuilt, so no dataset is read and nothing heavy is imported.
"""

from __future__ import annotations

from pathlib import Path

from captionlab.evaluation.slurm_grid import cell_name
from captionlab.study import state as st
from captionlab.study.plan import EMBEDDED_PREPARATION


def folders(model: str | None = None, out: Path | None = None) -> list[Path]:
    """The study folders asked for: `out`, the model's default folder, or every study in the workspace."""
    from captionlab.study.plan import default_out

    if out is not None:
        candidates = [Path(out).expanduser().resolve()]
    elif model:
        candidates = [default_out(model)]
    else:
        root = default_out("x").parent
        candidates = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [c for c in candidates if (c / "study.json").is_file()]


def states_of(folder: Path) -> list[st.StepState]:
    """Every step of the study in `folder`, in the order it runs them, with its state."""
    from captionlab.training.launcher import refresh_runs

    asked = st.study_json(folder)
    if not asked:
        raise ValueError(f"{folder / 'study.json'} cannot be read")
    refresh_runs()  # a trainer that died without saying so is crashed, not running
    preparation = EMBEDDED_PREPARATION if asked.get("model") == "embedded" else ()
    if asked.get("datasets_config"):
        preparation = tuple(p for p in preparation if p != "world")
    steps = [st.preparation_state(name) for name in preparation]
    steps += [st.training_state(folder, t["strategy"]) for t in asked.get("trainings", [])]
    cells = [st.cell_state(folder, cell_name(s, d)) for s in asked.get("captioners", [])
             for d in asked.get("datasets", [])]
    return steps + cells + [st.report_state(folder, cells)]


def format_states(folder: str | Path, steps: list[st.StepState]) -> str:
    asked = st.study_json(Path(folder))
    lines = [f"Study of {asked.get('model')} in {folder}: {st.summary(steps)}",
             f"{'step':<10}{'name':<32}{'state':<10}{'progress':<26}detail"]
    for step in steps:
        lines.append(f"{step.kind:<10}{step.name:<32}{step.state:<10}{step.progress:<26}{step.detail}")
    return "\n".join(lines)

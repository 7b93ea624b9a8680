"""The Train tab's study panel: each study in the workspace (`python -m train study`) and the state of its steps,
read from the study folders (`captionlab.study.status`). Read-only: the panel starts and stops nothing."""

from __future__ import annotations

STATE_MARKS = {"finished": "✅", "running": "⏳", "failed": "❌", "pending": "·"}


def study_status_markdown() -> str:
    """Markdown: per study, its counts and one row per step (state, progress, detail); a line when there is none."""
    from captionlab.study.status import folders, states_of
    from captionlab.study.state import study_json, summary

    found = folders()
    if not found:
        return ("No study yet. Run one from a terminal: `python -m train study --model llava-1.5-7b --datasets "
                "datasets.yaml` (`--dry-run` shows its plan first).")
    parts = []
    for folder in found:
        try:
            steps = states_of(folder)
        except Exception as exc:  # one unreadable study is said, the others still shown
            parts.append(f"**{folder.name}**: cannot be read ({exc})")
            continue
        asked = study_json(folder)
        rows = ["| step | name | state | progress | detail |", "|---|---|---|---|---|"]
        rows += [f"| {s.kind} | {s.name} | {STATE_MARKS.get(s.state, '')} {s.state} | {_cell(s.progress)} | "
                 f"{_cell(s.detail)} |" for s in steps]
        parts.append(f"**Study of {asked.get('model')}** ({summary(steps)}; `{folder}`)\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")[:200]

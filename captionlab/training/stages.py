"""Training in stages: a run started from another run's weights (`init_from`) continues that run.

Barraco et al.'s CLIP-Captioner is trained in two stages, cross-entropy then SCST, as two runs: the second's
config names the first's checkpoint in `init_from`. What the second run cost is then its own energy plus the
first's, and the first is a stage, not a captioner of its own. This module finds the earlier stage of a run
folder and its energy record, wherever the checkpoint named in `init_from` lies:
  - a run folder or a checkpoint inside one (`RUN/best`, `RUN/best/artifact`): the run's own `energy.json`;
  - an artifact shipped by the zoo (`<checkpoints>/<key>` or `<checkpoints>/strategies/<key>`): the shipped
    record of its run, `<checkpoints>/runs/<key>/energy.json`.
Torch-free (the app's Energy tab reads it).
"""

from __future__ import annotations

import json
from pathlib import Path

from captionlab import paths


def init_from_of(run_folder: Path) -> Path | None:
    """The checkpoint a run started from (its config's `init_from`, relative paths against the project), or None."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_folder) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    value = config.get("init_from") if isinstance(config, dict) else None
    if not value:
        return None
    start = Path(str(value)).expanduser()
    return (start if start.is_absolute() else paths.PROJECT_ROOT / start).resolve()


def earlier_stage_record(run_folder: Path) -> Path | None:
    """The folder holding the energy.json of the run this one continues, or None (no init_from, or none found)."""
    start = init_from_of(run_folder)
    if start is None:
        return None
    for folder in (start, *start.parents):
        if (folder / "energy.json").is_file() and folder != Path(run_folder).resolve():
            return folder
        if folder == paths.PROJECT_ROOT or folder.parent == folder:
            break
    checkpoints = start.parent.parent if start.parent.name == "strategies" else start.parent
    shipped = checkpoints / "runs" / start.name
    return shipped if (shipped / "energy.json").is_file() else None


def earlier_stages(run_folder: Path) -> list[tuple[str, Path, dict]]:
    """Every run this one continues, nearest first, as (name, record folder, energy record), following each
    stage's own `init_from` back; a record that cannot be read ends the chain."""
    stages, folder, seen = [], Path(run_folder).resolve(), {Path(run_folder).resolve()}
    while (record := earlier_stage_record(folder)) is not None and record.resolve() not in seen:
        seen.add(record.resolve())
        try:
            energy = json.loads((record / "energy.json").read_text())
        except (OSError, json.JSONDecodeError):
            break
        stages.append((record.name, record.resolve(), energy))
        folder = record
    return stages


def stages_kwh(stages: list[tuple[str, Path, dict]]) -> tuple[float, str]:
    """The energy of `earlier_stages` summed (kWh; each stage's whole run), and a note naming them ("" when none)."""
    named = ", ".join(f"{name} ({energy.get('kwh_all_epochs') or 0:.2e} kWh)" for name, _, energy in stages)
    return sum(energy.get("kwh_all_epochs") or 0 for _, _, energy in stages), named

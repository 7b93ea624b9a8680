"""The Benchmarks tab's data: the paper's Tables 1-3 beside this workspace's evaluations.

Rows are plain dicts `{source, model, strategy, dataset, metrics, ...}` on the paper's scale
(x100 except CLIP-Score). "paper" rows come from `reference_data.paper_results()`; "yours" rows
are the evaluations in the workspace database and those shipped with the checkpoints
(`<checkpoints>/results/**/results.json` or `*.db`), the newest one of each evaluated thing:
(model, strategy, dataset, split, checkpoint, images). A score is only ever shown as the result of
what was evaluated: another checkpoint's evaluation, or one of part of a split (the first N images
with `--limit`, or images left out as missing or broken), is a row of its own, labelled with its run
(or folder) and its image count, and never replaces the row of the checkpoints the app serves (the
shipped study), which carries no label. `table_rows` shapes them like the paper's tables and marks
the best value per model (of whole splits only: a score on part of a split is not comparable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from captionlab.evaluation.chair import mark_hallucinated
from captionlab.evaluation.clip_names import PAPER_CLIP_NAME, describe_clip
from captionlab.service.catalog import (DATASET_LABELS, IN_DOMAIN, LOWER_IS_BETTER, METRICS, OUT_OF_DOMAIN,
                                        PAPER_STRATEGIES, strategy_label)

PAPER = "paper"
YOURS = "yours"
BASELINE_STRATEGIES = ("none", "clip_captioner")
MAX_DRILLDOWN_ROWS = 500


def paper_rows() -> list[dict]:
    from captionlab.evaluation.reference_data import paper_results

    return [{"source": PAPER, **row} for row in paper_results()]


def your_rows(checkpoints: Path | None = None, problems: list[str] | None = None) -> list[dict]:
    """The newest evaluation of each (model, strategy, dataset, split, checkpoint, images), the
    workspace's over the shipped ones; each row labelled (`label`) with what sets it apart. A shipped results
    file that cannot be read is left out and, where `problems` is given, named there."""
    from captionlab.evaluation.results import list_results

    found: dict[tuple, dict] = {}
    workspace = [_row(r, "workspace", checkpoints) for r in reversed(list_results())]
    for row in _shipped_results(checkpoints, problems if problems is not None else []) + workspace:
        found[_identity_key(row)] = row  # oldest first: the newest wins, the workspace's over the shipped
    rows = list(found.values())
    _label(rows, checkpoints)
    return sorted(rows, key=lambda r: (r["model"], _strategy_order(r["strategy"]), r["label"] != "", r["label"],
                                       r["dataset"]))


def all_rows(checkpoints: Path | None = None) -> tuple[list[dict], list[str]]:
    """The paper's rows and yours, and one problem per source that could not be read (said, not hidden:
    a tab that shows fewer rows tells the user why)."""
    rows, problems = [], []
    for source, load in (("the paper's numbers", paper_rows),
                         ("your results", lambda: your_rows(checkpoints, problems))):
        try:
            rows += load()
        except Exception as exc:  # a damaged results database or reference file: report it, keep the other source
            problems.append(f"{source} are unavailable: {type(exc).__name__}: {exc}")
    return rows, problems


def _identity_key(row: dict) -> tuple:
    """What a row evaluated (model, strategy, split, checkpoint, part scored): two rows with one key are one result."""
    return row["model"], row["strategy"], row["dataset"], row["split"], row["checkpoint_key"], _coverage_key(row)


def _coverage_key(row: dict) -> tuple | None:
    """Which part of its split a row scored (None: all of it), as a key."""
    part = row.get("coverage")
    return None if part is None else (part["scored"], part["first"], part["missing"], part["broken"])


def _row(result, origin: str, checkpoints: Path | None, results_json: Path | None = None) -> dict:
    return {"source": YOURS, "origin": origin, "id": result.id, "model": result.model, "strategy": result.strategy,
            "dataset": result.dataset, "split": result.split, "metrics": dict(result.metrics),
            "unavailable": dict(result.unavailable), "n_images": result.n_images,
            "clip_encoder": result.clip_encoder, "predictions_path": result.predictions_path,
            "results_json": str(results_json) if results_json else None, "checkpoint": result.checkpoint,
            "checkpoint_key": _checkpoint_key(result.checkpoint, origin, checkpoints),
            "subset": subset_size(result), "coverage": coverage(result), "created_at": result.created_at}


_MISSING_NOTE = re.compile(r"skipped (\d+) record\(s\) whose image file is missing")


def coverage(result) -> dict | None:
    """What part of its split `result` scored, None for all of it: {scored, first (the `--limit` that cut it, or
    None), missing (images whose file was missing, left out with --skip-missing), broken (unreadable, left out with
    --skip-broken), of (the split's size where known)}. Evaluations recorded before the missing count was kept
    give it from their note."""
    extra = result.extra or {}
    first = subset_size(result)
    broken = len(extra.get("skipped") or [])
    missing = extra.get("missing_images")
    if missing is None:
        found = [_MISSING_NOTE.search(note) for note in extra.get("notes") or []]
        missing = sum(int(m.group(1)) for m in found if m)
    if first is None and not broken and not missing:
        return None
    whole = extra.get("split_images")
    return {"scored": result.n_images, "first": first, "missing": int(missing), "broken": broken,
            "of": int(whole) if whole is not None and first is None else None}


def subset_size(result) -> int | None:
    """N when `result` scored only the first N images of its split (`--limit N` cut it), else None.

    The images read are the ones scored plus the ones skipped as broken; a limit at or past the end
    of the split cut nothing (a split of exactly N images reads as cut: its size is not recorded)."""
    extra = result.extra or {}
    limit = extra.get("limit")
    if not limit:
        return None
    read = result.n_images + len(extra.get("skipped") or [])
    return int(limit) if read >= int(limit) else None


def _checkpoint_key(recorded: str | None, origin: str, checkpoints: Path | None) -> str | None:
    """The checkpoint evaluated, as a resolved path (None: the base model, e.g. zero-shot).

    A shipped result recorded where its checkpoint was on the machine that built the study; it is
    the one shipped beside it, so it is looked for in this checkpoints folder first."""
    from captionlab import paths

    if not recorded:
        return None
    if origin == "shipped" and checkpoints is not None:
        moved = _relocated(Path(recorded), Path(checkpoints))
        if moved is not None:
            return str(moved)
    path = Path(recorded).expanduser()
    return str((path if path.is_absolute() else paths.PROJECT_ROOT / path).resolve())


def _relocated(recorded: Path, checkpoints: Path) -> Path | None:
    """The longest tail of `recorded` (e.g. `strategies/lora`) that exists under `checkpoints`."""
    parts = recorded.parts
    for start in range(len(parts)):
        tail = Path(*parts[start:])
        if not tail.is_absolute() and (checkpoints / tail).exists():
            return (checkpoints / tail).resolve()
    return None


def _label(rows: list[dict], checkpoints: Path | None) -> None:
    """Set each row's `label`: its checkpoint unless it is the app's own (the checkpoints folder it
    serves, or the base model), and its image count when it scored only part of the split."""
    runs = run_folders()
    served = Path(checkpoints).resolve() if checkpoints is not None else None
    for row in rows:
        where = checkpoint_label(row["checkpoint_key"], served, runs)
        images = "" if row.get("coverage") is None else coverage_label(row["coverage"])
        row["label"] = " · ".join(part for part in (where, images) if part)


def coverage_label(part: dict) -> str:
    """'first 10 images', '4,990 of 5,000 images (10 missing)', '98 of the first 100 images (2 broken)'."""
    scored, first = part["scored"], part["first"]
    left_out = ", ".join(f"{count:,} {why}" for why, count in (("missing", part["missing"]), ("broken", part["broken"]))
                         if count)
    if first is not None:
        text = f"first {first:,} images" if scored == first else f"{scored:,} of the first {first:,} images"
    else:
        whole = part["of"] if part["of"] is not None else scored + part["missing"] + part["broken"]
        text = f"{scored:,} of {whole:,} images"
    return text + (f" ({left_out})" if left_out and scored != first else "")


def run_folders() -> dict[Path, str]:
    """Resolved run folder -> run id, for every run of the workspace (registered or only on disk)."""
    from captionlab import paths
    from captionlab.training import runs_db

    folders = {p.resolve(): p.name for p in paths.runs_dir().iterdir() if p.is_dir()}
    for run in runs_db.list_runs():
        if run.get("run_dir"):
            folders[Path(run["run_dir"]).expanduser().resolve()] = run["run_id"]
    return folders


def checkpoint_label(checkpoint_key: str | None, served: Path | None, runs: dict[Path, str]) -> str:
    """"" for the base model and the served checkpoints; "run ID" (" · last" when not its best
    checkpoint) for a run of the workspace; else the folder's name."""
    if checkpoint_key is None:
        return ""
    path = Path(checkpoint_key)
    if served is not None and path.is_relative_to(served):
        return ""
    for folder, run_id in runs.items():
        if path.is_relative_to(folder):
            which = [part for part in path.relative_to(folder).parts if part != "artifact"]
            return f"run {run_id}" + (f" · {'/'.join(which)}" if which and which != ["best"] else "")
    return f"{path.parent.name}/{path.name}" if path.name == "artifact" else path.name


def _shipped_results(checkpoints: Path | None, problems: list[str]) -> list[dict]:
    """The rows of the results shipped under `checkpoints`/results (databases and results.json files); one that
    cannot be read is skipped and named in `problems`."""
    if checkpoints is None or not (Path(checkpoints) / "results").is_dir():
        return []
    import sqlite3

    from captionlab.evaluation import results as store

    folder = Path(checkpoints) / "results"
    rows = []
    for db_file in sorted(folder.glob("*.db")):
        try:
            rows += [_row(r, "shipped", checkpoints) for r in reversed(store.list_results(db_path=db_file))]
        except (sqlite3.Error, ValueError, KeyError, TypeError, OSError) as exc:
            problems.append(f"shipped results {db_file} skipped: {type(exc).__name__}: {exc}")
    for path in sorted(folder.rglob(store.RESULTS_JSON_NAME)):
        try:
            row = _row(store.load_results_json(path).result, "shipped", checkpoints, path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError, OSError) as exc:
            problems.append(f"shipped results {path} skipped: {type(exc).__name__}: {exc}")
            continue
        row["predictions_path"] = _shipped_predictions(row["predictions_path"], path.parent)
        rows.append(row)
    return rows


def _shipped_predictions(recorded: str | None, folder: Path) -> str | None:
    """The predictions shipped beside a results.json, else where it recorded them (relative to the project)."""
    from captionlab import paths

    candidates = [folder / "predictions.jsonl"]
    if recorded:
        candidates.append(Path(recorded) if Path(recorded).is_absolute() else paths.PROJECT_ROOT / recorded)
    return next((str(c) for c in candidates if c.is_file()), recorded)


def _strategy_order(strategy: str) -> int:
    if strategy in BASELINE_STRATEGIES:
        return -1
    return PAPER_STRATEGIES.index(strategy) if strategy in PAPER_STRATEGIES else len(PAPER_STRATEGIES)


def _model_of(row: dict) -> str:
    return "CLIP-Captioner" if row["strategy"] in BASELINE_STRATEGIES else row["model"]


def _line_of(row: dict) -> tuple:
    """(source, model, strategy, checkpoint, images): the rows one table line (or chart mark) holds."""
    return row["source"], _model_of(row), row["strategy"], row.get("checkpoint_key"), _coverage_key(row)


def _whole_split(row: dict) -> bool:
    return row.get("coverage") is None


def _with_label(text: str, row: dict) -> str:
    return " · ".join(part for part in (text, row.get("label")) if part)


# --- tables like the paper's --------------------------------------------------------------------


def table_columns(datasets: list[str]) -> list[str]:
    columns = ["Source", "Model", "Strategy"]
    for dataset in datasets:
        prefix = f"{DATASET_LABELS.get(dataset, dataset)} " if len(datasets) > 1 else ""
        columns += [f"{prefix}{short}" for short, _ in METRICS]
    return columns


def table_rows(rows: list[dict], datasets: list[str]) -> tuple[list[str], list[list], list[dict]]:
    """(columns, cells, keys): one line per (source, model, strategy, checkpoint, images) over `datasets`.

    Cells are markdown: the best value of each metric (the lowest of CHAIR's) per model and source in bold, the best
    of each source overall marked with a star (the paper's bold and underline); a score on the
    first N images only is never marked. A line of another checkpoint than the served one, or of
    a subset, says so after its strategy (`label`). `keys[i]` says which line i is, for drilling down.
    """
    lines: dict[tuple, dict] = {}
    for row in rows:
        if row["dataset"] not in datasets:
            continue
        lines.setdefault(_line_of(row), {})[row["dataset"]] = row
    labels = {key: next(iter(by_dataset.values())).get("label", "") for key, by_dataset in lines.items()}
    order = sorted(lines, key=lambda k: (k[0] != YOURS, k[1] != "CLIP-Captioner", k[1], _strategy_order(k[2]),
                                         labels[k] != "", labels[k]))
    best_model: dict[tuple, float] = {}
    best_source: dict[tuple, float] = {}
    for key in order:
        for dataset, row in lines[key].items():
            if not _whole_split(row):
                continue
            for _, metric in METRICS:
                value = row["metrics"].get(metric)
                if value is None:
                    continue
                for store, group in ((best_model, (key[0], key[1], dataset, metric, _scorer(row, metric))),
                                     (best_source, (key[0], dataset, metric, _scorer(row, metric)))):
                    better = min if metric in LOWER_IS_BETTER else max
                    store[group] = better(store.get(group, value), value)
    cells, keys = [], []
    for key in order:
        source, model, strategy = key[:3]
        name = "" if strategy in BASELINE_STRATEGIES else strategy_label(strategy)
        line = [source, model, " · ".join(part for part in (name, labels[key]) if part) or "—"]
        for dataset in datasets:
            row = lines[key].get(dataset)
            for _, metric in METRICS:
                value = None if row is None else row["metrics"].get(metric)
                marked = row is not None and _whole_split(row)
                scorer = None if row is None else _scorer(row, metric)
                cell = _format_cell(value, metric, best_model.get((source, model, dataset, metric, scorer)) if marked else None,
                             best_source.get((source, dataset, metric, scorer)) if marked else None, model)
                line.append(cell + (" †" if value is not None and scorer not in (None, PAPER_CLIP_NAME) else ""))
        cells.append(line)
        keys.append({"source": source, "model": model, "strategy": strategy, "label": labels[key],
                     "rows": {d: lines[key][d] for d in datasets if d in lines[key]}})
    return table_columns(datasets), cells, keys


def _scorer(row: dict, metric: str) -> str | None:
    """The CLIP a CLIP-Score was computed with (the paper's: ViT-B/32), so that only scores of one CLIP are ranked
    together; None for the other metrics."""
    if metric not in ("CLIP-Score", "RefCLIP-Score"):
        return None
    return PAPER_CLIP_NAME if row["source"] == PAPER else (row.get("clip_encoder") or "an unrecorded CLIP")


def clip_encoder_note(rows: list[dict]) -> str:
    """A line naming the CLIPs of the rows' CLIP-S that are not the paper's ViT-B/32 (marked † in the table), or ''."""
    others = sorted({_scorer(r, "CLIP-Score") for r in rows if r["metrics"].get("CLIP-Score") is not None}
                    - {PAPER_CLIP_NAME})
    if not others:
        return ""
    named = ", ".join(describe_clip(name) for name in others)
    return (f"† CLIP-S computed with {named}, not the paper's ViT-B/32: comparable only with other † values of the "
            "same CLIP, and ranked only among them.")


def _format_cell(value: float | None, metric: str, best_in_model: float | None, best_overall: float | None,
                 model: str) -> str:
    """A table cell: bold where best among one model's strategies, a star where best overall."""
    if value is None:
        return "–"
    text = f"{value:.3f}" if metric == "CLIP-Score" else f"{value:.1f}"
    if model != "CLIP-Captioner" and best_in_model is not None and value == best_in_model:
        text = f"**{text}**"
    if best_overall is not None and value == best_overall:
        text += " ★"
    return text


# --- figures' data ------------------------------------------------------------------------------


def cider_series(rows: list[dict], datasets: list[str]) -> list[dict]:
    """Fig. 2's bars: [{group: "paper · LLaVA-v1.5-7B", strategy, dataset, cider}], one group per
    (source, model) and one more per labelled checkpoint or subset (`your_rows`' `label`, as the
    table's lines); the CLIP-Captioner of a source is drawn in each of its groups for reference."""
    scored = [r for r in rows if r["dataset"] in datasets and r["metrics"].get("CIDEr") is not None]
    groups: dict[str, list[str]] = {}
    for row in scored:
        if row["strategy"] not in BASELINE_STRATEGIES:
            name = _with_label(f"{row['source']} · {row['model']}", row)
            if name not in groups.setdefault(row["source"], []):
                groups[row["source"]].append(name)
    out = []
    for row in scored:
        if row["strategy"] in BASELINE_STRATEGIES and not row.get("label"):
            targets = groups.get(row["source"]) or [f"{row['source']} · CLIP-Captioner"]
        elif row["strategy"] in BASELINE_STRATEGIES:
            targets = [_with_label(f"{row['source']} · CLIP-Captioner", row)]
        else:
            targets = [_with_label(f"{row['source']} · {row['model']}", row)]
        for group in targets:
            out.append({"group": group, "strategy": strategy_label(row["strategy"]), "strategy_key": row["strategy"],
                        "dataset": DATASET_LABELS.get(row["dataset"], row["dataset"]),
                        "cider": row["metrics"]["CIDEr"]})
    order = {DATASET_LABELS.get(d, d): i for i, d in enumerate(datasets)}
    return sorted(out, key=lambda p: (p["group"], _strategy_order(p["strategy_key"]), order.get(p["dataset"], 99)))


def generalisation_points(rows: list[dict]) -> list[dict]:
    """In-domain (COCO) CIDEr against mean out-of-domain CIDEr, per (source, model, strategy) and,
    as the table's lines, per checkpoint and subset (its label then follows the model's name)."""
    grouped: dict[tuple, dict[str, float]] = {}
    for row in rows:
        cider = row["metrics"].get("CIDEr")
        if cider is not None:
            key = (row["source"], _with_label(_model_of(row), row), row["strategy"], *_line_of(row)[3:])
            grouped.setdefault(key, {})[row["dataset"]] = cider
    points = []
    for (source, model, strategy, *_), by_dataset in grouped.items():
        outside = [by_dataset[d] for d in OUT_OF_DOMAIN if d in by_dataset]
        if IN_DOMAIN in by_dataset and outside:
            points.append({"source": source, "model": model, "strategy": strategy_label(strategy),
                           "in_domain": by_dataset[IN_DOMAIN], "out_of_domain": sum(outside) / len(outside),
                           "n_out": len(outside)})
    return points


# --- drill-down ---------------------------------------------------------------------------------


def drilldown(row: dict) -> tuple[list[dict], str]:
    """Per-image captions and scores of one evaluation (a "yours" row), and a line saying where from."""
    if row.get("source") != YOURS:
        return [], "the paper publishes corpus scores only: pick one of your evaluations for per-image captions"
    per_image: dict[str, dict] = {}
    hallucinated: dict[str, list[str]] | None = None
    image_domains: dict = {}
    results_json = row.get("results_json")
    if not results_json and row.get("predictions_path"):
        from captionlab.evaluation.results import results_json_path

        candidate = results_json_path(row["predictions_path"])
        results_json = str(candidate) if candidate.is_file() else None
    if results_json:
        from captionlab.evaluation.results import load_results_json

        try:
            loaded = load_results_json(results_json)
            per_image, hallucinated = loaded.per_image, loaded.hallucinated
            image_domains = (loaded.result.extra or {}).get("image_domains") or {}  # nocaps: in/near/out-domain
        except (OSError, ValueError, KeyError, TypeError):
            per_image = {}
    predictions = _read_predictions(row.get("predictions_path"))
    if not predictions and not per_image:
        where = row.get("predictions_path") or "not recorded"
        return [], f"{_label_prefix(row)}no per-image data for this evaluation (predictions: {where})"
    ids = list(predictions) or sorted({i for scores in per_image.values() for i in scores})
    out = []
    for image_id in ids[:MAX_DRILLDOWN_ROWS]:
        entry = predictions.get(image_id, {})
        line = {"image": image_id, "caption": entry.get("caption", "")}
        if hallucinated is not None:  # CHAIR was computed: its hallucinated objects in bold, and listed
            words = hallucinated.get(image_id, [])
            line["caption"] = mark_hallucinated(line["caption"], words)
            line["hallucinated"] = ", ".join(words)
        if image_domains:
            line["domain"] = image_domains.get(image_id, "")
        for metric, scores in per_image.items():
            value = scores.get(image_id)
            line[f"{metric} (image)"] = None if value is None else round(float(value), 3)
        line["references"] = list(entry.get("references", []))
        out.append(line)
    source = f"{_label_prefix(row)}{len(ids)} images from {row.get('predictions_path') or results_json}"
    if len(ids) > MAX_DRILLDOWN_ROWS:
        source += f" (first {MAX_DRILLDOWN_ROWS} shown)"
    if per_image:
        source += (". **Bold** in a caption: an object it names that the image does not have (CHAIR)"
                   if hallucinated is not None else "")
        source += (". Scores are per image (each caption against its own references; CIDEr-D with the split's "
                   "document frequencies): BLEU-4 of one caption is 0 without a 4-gram in common, so they do not "
                   "average to the table's corpus scores")
    return out, source


def _label_prefix(row: dict) -> str:
    """"run r1 · first 10 images: " before the drill-down's line, for a labelled row."""
    return f"{row['label']}: " if row.get("label") else ""


def _read_predictions(path: str | None) -> dict[str, dict]:
    """image id -> {caption, references} from a predictions JSONL (or JSON list) file."""
    if not path or not Path(path).is_file():
        return {}
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            return {}
    if isinstance(records, list) and len(records) == 1 and isinstance(records[0], list):
        records = records[0]
    out = {}
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or not isinstance(record.get("caption", record.get("prediction")), str):
            continue  # e.g. a line of metadata
        image_id = str(record.get("image_id", record.get("id", len(out))))
        caption = record.get("caption", record.get("prediction", ""))
        references = record.get("references", record.get("refs", []))
        out[image_id] = {"caption": str(caption), "references": [str(r) for r in references or []]}
    return out


def dataset_for_column(column: int, datasets: list[str]) -> str:
    """The dataset of a clicked column of `table_rows` (the first one for Source/Model/Strategy)."""
    index = (column - 3) // len(METRICS)
    return datasets[index] if 0 <= index < len(datasets) else datasets[0]

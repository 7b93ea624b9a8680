"""CHAIR for the shipped embedded study, computed from its shipped predictions (nothing is recaptioned).

    python -m captionlab.evaluation.chair_study --checkpoints checkpoints/embedded
    python -m train zoo --only report   # then: tables.md, the README's generated section, manifest.json

For each `results/<strategy>/<dataset>/results.json` of the chosen datasets (default: coco), every caption of
`predictions.jsonl` is scored against its scene's objects in the world the study was evaluated on (seed 0,
scale 1, as `python -m train zoo` builds it; each regenerated example's references are checked against the
ones shipped beside the caption, so a world that differs is refused, not silently used). CHAIR-i, CHAIR-s
and Object-Recall join the results' metrics, per-image rates and hallucinated words join the file. The report
and manifest are the zoo's to write (evaluation does not know the zoo): `python -m train zoo --only report`.
New zoo builds need none of this: their evaluations compute CHAIR themselves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from captionlab import paths
from captionlab.evaluation.chair import CHAIR_METRICS, outcome_of, score_chair, world_vocabulary

STUDY_SEED, STUDY_SCALE = 0, 1.0  # captionlab.zoo.step_world


class StudyMismatch(RuntimeError):
    """The shipped predictions do not come from the world this module regenerates."""


def _predictions(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {str(row["image_id"]): row for row in rows if "image_id" in row}


def add_chair(results_json: Path, seed: int = STUDY_SEED, scale: float = STUDY_SCALE) -> dict[str, float]:
    """Add CHAIR to one shipped results.json from the predictions beside it; returns the metrics added."""
    from captionlab.world.domains import split_sizes
    from captionlab.world.objects import world_examples

    document = json.loads(results_json.read_text())
    result = document["result"]
    rows = _predictions(results_json.parent)
    examples = world_examples(seed, split_sizes(scale)[result["dataset"]], result["dataset"], rows)
    for image_id, row in rows.items():
        if image_id not in examples or list(examples[image_id].references) != list(row.get("references") or []):
            raise StudyMismatch(f"{results_json.parent}: image {image_id} is not the world's (seed {seed}, "
                                f"scale {scale}) image of that id: its references differ")
    truth = {k: frozenset(example.scene.kinds()) for k, example in examples.items()}
    outcome = outcome_of(score_chair({k: row["caption"] for k, row in rows.items()}, truth, world_vocabulary()))
    result["metrics"].update(outcome.metrics)
    result["unavailable"] = {k: v for k, v in result.get("unavailable", {}).items() if k not in CHAIR_METRICS}
    result["unavailable"].update(outcome.unavailable)
    document["per_image"].update(outcome.per_image)
    document["hallucinated_words"] = outcome.hallucinated
    results_json.write_text(json.dumps(document, indent=1, sort_keys=True, default=str))  # as the zoo writes it
    return outcome.metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=paths.CHECKPOINTS_DIR / "embedded",
                        help="the shipped study (default checkpoints/embedded)")
    parser.add_argument("--datasets", default="coco", help="comma-separated domains to score (default coco)")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for dataset in datasets:
        for results_json in sorted(args.checkpoints.glob(f"results/*/{dataset}/results.json")):
            metrics = add_chair(results_json)
            print(f"{results_json.parent.parent.name} on {dataset}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()))
    print("now rewrite the report and manifest: python -m train zoo --only report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

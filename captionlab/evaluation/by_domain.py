"""nocaps by its domains: each domain's metrics, as nocaps' paper and leaderboard report them.

    by_domain = score_by_domain(predictions, references, domains, per_image_clip)
    # {"in-domain": {"BLEU-4": ..., "CIDEr": ..., "CLIP-Score": ..., "n_images": 41}, "near-domain": ..., ...}

Each domain is scored on its own subset of images, as the nocaps evaluation server does: the
n-gram metrics run again on that subset alone, so CIDEr's document frequencies (and BLEU's
corpus brevity penalty) are the subset's, not the whole split's; the overall row stays the one
computed on all images. CLIP-Score and RefCLIP-Score are per-image means, so a domain's is the
mean of its images' per-image scores. Metrics on the paper's scale (x100 but CLIP-Score).

`python -m captionlab.evaluation.by_domain checkpoints/embedded` re-scores the embedded study's shipped
nocaps predictions by domain (no captioning: the shipped captions, the world's domain tags) and
writes `by_domain` into each `results/<strategy>/nocaps/results.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

from captionlab.data.readers.nocaps import NOCAPS_DOMAINS

SCOPE = "each domain scored on its own images (CIDEr document frequencies of that subset), as nocaps' server does"
PER_IMAGE_MEANS = ("CLIP-Score", "RefCLIP-Score")


def domains_of(records) -> dict[str, str]:
    """image id -> domain, for the records that have one (empty for a benchmark without domains)."""
    return {record.image_id: record.subdomain for record in records if record.subdomain is not None}


def score_by_domain(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    domains: Mapping[str, str], per_image: Mapping[str, Mapping[str, float]] | None = None
                    ) -> dict[str, dict[str, float | int]]:
    """Per domain (NOCAPS_DOMAINS order, then any other): its images' metrics and how many there were."""
    from captionlab.evaluation.metrics import score_captions

    names = [*NOCAPS_DOMAINS, *sorted(set(domains.values()) - set(NOCAPS_DOMAINS))]
    scores: dict[str, dict[str, float | int]] = {}
    for name in names:
        ids = [image_id for image_id in predictions if domains.get(image_id) == name]
        if not ids:
            continue
        report = score_captions({k: predictions[k] for k in ids}, {k: list(references[k]) for k in ids})
        row: dict[str, float | int] = dict(report.paper_scale())
        for metric in PER_IMAGE_MEANS:
            values = [per_image[metric][k] for k in ids if per_image and k in per_image.get(metric, {})]
            if values:
                row[metric] = sum(values) / len(values)
        row["n_images"] = len(ids)
        scores[name] = row
    return scores


def domain_extra(records, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                 per_image: Mapping[str, Mapping[str, float]] | None) -> dict:
    """What an evaluation's `extra` records of its domains: `by_domain`, `by_domain_scope` and `image_domains`
    (image id -> domain, for the drill-down); {} for a benchmark without domains."""
    domains = domains_of(records)
    if not domains:
        return {}
    return {"by_domain": score_by_domain(predictions, references, domains, per_image), "by_domain_scope": SCOPE,
            "image_domains": {image_id: domains[image_id] for image_id in predictions if image_id in domains}}


def rescore_shipped(checkpoints: Path, world_config: Path) -> list[Path]:
    """Add `by_domain` to every shipped nocaps results.json from its predictions.jsonl (captions and references
    as shipped) and the world's domain tags; returns the files rewritten."""
    from captionlab.data.datasets import load_records

    records = load_records("nocaps", config=world_config)
    domains = domains_of(records)
    by_id = {record.image_id: record for record in records}
    written = []
    for results_path in sorted(Path(checkpoints).glob("results/*/nocaps/results.json")):
        document = json.loads(results_path.read_text())
        lines = [json.loads(line) for line in (results_path.parent / "predictions.jsonl").read_text().splitlines()
                 if line.strip()]
        predictions = {row["image_id"]: row["caption"] for row in lines}
        references = {row["image_id"]: row["references"] for row in lines}
        missing = sorted(set(predictions) - set(domains))
        if missing:
            raise SystemExit(f"{results_path}: image ids {missing[:3]} have no domain in {world_config}")
        changed = [k for k in predictions if tuple(references[k]) != by_id[k].references]
        if changed:
            raise SystemExit(f"{results_path}: the references of images {changed[:3]} differ from {world_config}'s: "
                             "these predictions are not of this world")
        document["result"]["extra"].update(domain_extra(records, predictions, references, document.get("per_image")))
        results_path.write_text(json.dumps(document, indent=1, sort_keys=True, default=str))  # as the zoo writes it
        written.append(results_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-score the shipped nocaps predictions by domain.")
    parser.add_argument("checkpoints", type=Path, help="the embedded study's folder (checkpoints/embedded)")
    parser.add_argument("--world", type=Path, help="the world's datasets.yaml (default: the workspace's, "
                                                   "generated on first use)")
    args = parser.parse_args(argv)
    from captionlab.data.datasets import default_config_path, ensure_embedded_world

    ensure_embedded_world("nocaps", args.world)
    for path in rescore_shipped(args.checkpoints, args.world or default_config_path()):
        print(f"wrote by_domain into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

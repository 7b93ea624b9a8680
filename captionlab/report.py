"""The embedded study's report: Tables 1-4 in the paper's shape and the checks the study must pass,
generated from the shipped results (never typed by hand).

    python -m captionlab.report [--checkpoints checkpoints/embedded] [--readme README.md]

writes `<checkpoints>/results/tables.md` and, with --readme, replaces the README's section between
`<!-- embedded-study:start -->` and `<!-- embedded-study:end -->`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from captionlab import paths
from captionlab.evaluation.findings import check_findings, findings_lines
from captionlab.names import REPORTED_METRICS as METRICS
from captionlab.names import STRATEGY_LABELS as LABELS
from captionlab.names import STUDY_ORDER as ORDER
from captionlab.names import ZERO_SHOT, strategy_traits

START, END = "<!-- embedded-study:start -->", "<!-- embedded-study:end -->"
EMBEDDED_LABEL = "embedded tiny LLaVA"


def load_study(checkpoints: Path) -> dict[tuple[str, str], dict]:
    """(strategy, dataset) -> {"metrics", "unavailable", "predictions", "references", ...} from results/."""
    study = {}
    for results_json in sorted((Path(checkpoints) / "results").glob("*/*/results.json")):
        document = json.loads(results_json.read_text())
        result = document["result"]
        predictions, references = {}, {}
        predictions_file = results_json.parent / "predictions.jsonl"
        if predictions_file.exists():
            for line in predictions_file.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "image_id" in row:
                    predictions[str(row["image_id"])] = row.get("caption", "")
                    references[str(row["image_id"])] = list(row.get("references") or [])
        study[(result["strategy"], result["dataset"])] = {**result, "predictions": predictions, "references": references,
                                                          "per_image": document.get("per_image", {})}
    return study


def _cell(value, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if metric == "CLIP-Score" else f"{value:.1f}"


def _on_llava(strategy: str) -> bool:
    """A LLaVA row (bold where best), not the baseline's own model (its own line, never bold)."""
    return strategy_traits(strategy).uses_llava_base


def metrics_table(study: dict, datasets: tuple[str, ...], model_label: str = EMBEDDED_LABEL) -> str:
    """A table shaped like the paper's Tables 1-3; the best value of each column in bold (LLaVA rows)."""
    header = "| Model | Strategy | " + " | ".join(f"{d} {m}" for d in datasets for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (2 + len(datasets) * len(METRICS))]
    best = {}
    for d in datasets:
        for m in METRICS:
            values = [study[(s, d)]["metrics"].get(m) for s in ORDER if (s, d) in study and _on_llava(s)]
            values = [v for v in values if v is not None]
            best[(d, m)] = max(values) if values else None
    for strategy in ORDER:
        if not any((strategy, d) in study for d in datasets):
            continue
        model = model_label if _on_llava(strategy) else LABELS[strategy]
        cells = []
        for d in datasets:
            for m in METRICS:
                value = study.get((strategy, d), {}).get("metrics", {}).get(m)
                text = _cell(value, m)
                if value is not None and _on_llava(strategy) and value == best[(d, m)]:
                    text = f"**{text}**"
                cells.append(text)
        label = LABELS[strategy] if _on_llava(strategy) else "-"  # the baseline is its own model: no strategy
        lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hallucination_table(study: dict, dataset: str = "coco") -> str:
    """CHAIR per strategy (Rohrbach et al. 2018, percent; lower is better) beside CIDEr, from the results."""
    lines = ["| Strategy | CHAIR-i | CHAIR-s | Object recall | CIDEr |", "|---|---|---|---|---|"]
    for strategy in ORDER:
        row = study.get((strategy, dataset))
        if row is None:
            continue
        values = [row["metrics"].get(m) for m in ("CHAIR-i", "CHAIR-s", "Object-Recall", "CIDEr")]
        lines.append(f"| {LABELS[strategy]} | " + " | ".join(_cell(v, "") for v in values) + " |")
    return "\n".join(lines)


def hallucination_section(study: dict, dataset: str = "coco") -> list[str]:
    """The CHAIR table under its heading, or nothing when no result of `dataset` has CHAIR."""
    if not any("CHAIR-s" in row["metrics"] for (_, d), row in study.items() if d == dataset):
        return []
    return [f"#### Object hallucination on {dataset} test (CHAIR, Rohrbach et al. 2018: % of object mentions / of "
            f"captions naming an object the scene lacks, lower is better; each scene's objects are known exactly)",
            hallucination_table(study, dataset)]


def nocaps_domain_table(study: dict, model_label: str = EMBEDDED_LABEL) -> str:
    """CIDEr (and the other metrics) per nocaps domain, each domain scored on its own images, as nocaps reports it."""
    from captionlab.data.readers.nocaps import NOCAPS_DOMAINS

    header = "| Model | Strategy | " + " | ".join(f"{d} {m}" for d in (*NOCAPS_DOMAINS, "overall") for m in
                                                ("CIDEr", "CLIP-Score")) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * (len(NOCAPS_DOMAINS) + 1))]
    for strategy in ORDER:
        row = study.get((strategy, "nocaps"))
        by_domain = (row or {}).get("extra", {}).get("by_domain")
        if not by_domain:
            continue
        cells = [_cell(by_domain.get(d, {}).get(m), m) for d in NOCAPS_DOMAINS for m in ("CIDEr", "CLIP-Score")]
        cells += [_cell(row["metrics"].get(m), m) for m in ("CIDEr", "CLIP-Score")]
        model = model_label if _on_llava(strategy) else LABELS[strategy]
        label = LABELS[strategy] if _on_llava(strategy) else "-"  # the baseline is its own model: no strategy
        lines.append(f"| {model} | {label} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "nocaps by domain: not recorded in these results."
    counts = next(row["extra"]["by_domain"] for (s, d), row in study.items()
                  if d == "nocaps" and row.get("extra", {}).get("by_domain"))
    images = ", ".join(f"{d} {scores.get('n_images')}" for d, scores in counts.items())
    return ("Each domain scored on its own images (CIDEr's document frequencies are that domain's), as nocaps' "
            f"evaluation server does; images: {images}.\n\n" + "\n".join(lines))


def generation_line(study: dict) -> str:
    """The caption length limit every number above was generated with, and how many captions it cut."""
    limits = sorted({str(row.get("extra", {}).get("settings", {}).get("max_new_tokens")) for row in study.values()})
    cuts = [row.get("extra", {}).get("cut_at_max_new_tokens") for row in study.values()]
    counted = [c for c in cuts if c is not None]
    told = (f"{sum(counted)} caption(s) cut at the limit unfinished" if len(counted) == len(cuts)
            else "cut captions not counted in these results")
    return (f"Captions: greedy decoding, max_new_tokens={', '.join(limits)} ({told}); the paper states no limit.")


TABLE_4_NOTE = ("Covers: the parts each figure counts (NVML: the GPU only; RAPL: CPU package and DRAM; an estimate: "
                "what it assumed). The paper does not say what its Table 4 covers. LoRA and DoRA adapt the LLM's seven "
                "projections, the layers Table 4's 319.8M / 321.2M count; the method text's \"all fully connected "
                "layers\" is `lora_targets: all_linear`.")


def energy_table(checkpoints: Path) -> str:
    from captionlab.training.energy import covered_parts
    from captionlab.training.stages import earlier_stages, stages_kwh

    lines = ["| Strategy | Trainable params | Energy, all epochs (kWh) | Energy, up to best (kWh) | Best epoch "
             "| Method | Covers |", "|---|---|---|---|---|---|---|"]
    for strategy in ORDER:
        energy_file = Path(checkpoints) / "runs" / strategy / "energy.json"
        if not energy_file.exists():
            continue
        energy = json.loads(energy_file.read_text())
        kwh_all, kwh_best = energy.get("kwh_all_epochs") or 0, energy.get("kwh_best") or 0
        covers = covered_parts(energy)
        # a run continuing another (the CLIP-Captioner's SCST after its cross-entropy stage) counts both
        stage_kwh, stages = stages_kwh(earlier_stages(energy_file.parent))
        if stages:
            kwh_all, kwh_best = kwh_all + stage_kwh, kwh_best + stage_kwh
            covers += f"; with its earlier stage(s) {stages}"
        lines.append(f"| {LABELS[strategy]} | {energy.get('trainable_parameters', 0):,} | "
                     f"{kwh_all:.2e} | {kwh_best:.2e} | "
                     f"{energy.get('best_epoch')} | {energy.get('label') or energy.get('method')} | "
                     f"{covers} |")
    return "\n".join(lines) + "\n\n" + TABLE_4_NOTE


def mean_words(texts) -> float:
    texts = list(texts)
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def checks(study: dict, checkpoints: Path) -> list[str]:
    """The quality claims the embedded study makes, each computed from the shipped predictions."""
    from captionlab.evaluation.novel_objects import count_novel_naming, embedded_novel_patterns

    out = []
    zero = study.get((ZERO_SHOT, "coco"))
    if zero:
        refs = [r for rs in zero["references"].values() for r in rs]
        out.append(f"Zero-shot captions on coco average {mean_words(zero['predictions'].values()):.1f} words against "
                   f"{mean_words(refs):.1f} for the references.")
    for strategy in ORDER:
        row = study.get((strategy, "coco"))
        if row and row["predictions"]:
            distinct = len(set(row["predictions"].values())) / len(row["predictions"])
            out.append(f"{LABELS[strategy]}: {distinct:.0%} of coco test captions are distinct; "
                       f"mean {mean_words(row['predictions'].values()):.1f} words.")
    for strategy in ORDER:
        check = Path(checkpoints) / "results" / strategy / "coco" / "shuffled_clip_score.json"
        if check.exists():
            values = json.loads(check.read_text())
            out.append(f"{LABELS[strategy]}: CLIP-Score {values['clip_score']:.3f} with its own coco test image, "
                       f"{values['clip_score_shuffled']:.3f} with another image's (shuffled pairing).")
    out.extend(vision_probe_lines(Path(checkpoints) / "results" / "vision_probe.json"))
    novel = embedded_novel_patterns()
    for strategy in ORDER:
        row = study.get((strategy, "nocaps"))
        if row and row["predictions"]:
            out.append(count_novel_naming(row["predictions"], row["references"], novel).line(LABELS[strategy]))
    return out


def vision_probe_lines(probe_json: Path) -> list[str]:
    """What the vision tower reads (the zoo's probe step), beside the raw pixels, per benchmark."""
    if not probe_json.exists():
        return []
    probe = json.loads(probe_json.read_text())
    tower, pixels = probe["tower"], probe["raw_pixels"]
    kinds = ", ".join(f"{name} {tower[f'kind/{name}']:.0%} ({pixels[f'kind/{name}']:.0%})"
                      for name in ("coco", "nocaps", "cc3m", "vizwiz", "textcaps"))
    return [f"Vision tower: a linear probe of the patch tokens LLaVA's projector reads names the main object's kind "
            f"for {kinds} of the evaluated images (in brackets: the same probe on the raw {probe['image_size']} px "
            f"pixels); on coco the main object's colour {tower['colour/coco']:.0%} ({pixels['colour/coco']:.0%}), "
            f"the setting {tower['setting/coco']:.0%} ({pixels['setting/coco']:.0%}); the word written on "
            f"TextCaps pictures {tower['word/textcaps']:.0%} ({pixels['word/textcaps']:.0%})."]


def clip_line(study: dict) -> str:
    """Which CLIP the study's CLIP-S values come from, and that the paper's came from another."""
    from captionlab.evaluation.clip_names import PAPER_CLIP_NAME, describe_clip

    names = sorted({row.get("clip_encoder") or "an unrecorded CLIP" for row in study.values()
                    if row["metrics"].get("CLIP-Score") is not None})
    if not names:
        return "CLIP-S: not computed."
    described = ", ".join(describe_clip(name) for name in names)
    paper = "" if names == [PAPER_CLIP_NAME] else " The paper's CLIP-S used ViT-B/32: the two scales differ."
    return f"CLIP-S computed with {described}.{paper}"


def cider_scores(study: dict) -> dict[tuple[str, str], float]:
    """(strategy, dataset) -> CIDEr of every result that has one."""
    return {key: result["metrics"]["CIDEr"] for key, result in study.items()
            if (result.get("metrics") or {}).get("CIDEr") is not None}


def render(checkpoints: Path, model_label: str = EMBEDDED_LABEL, with_checks: bool = True) -> str:
    """The tables of the results under `checkpoints` (results/ and runs/); the checks are the embedded study's."""
    study = load_study(checkpoints)
    parts = [
        clip_line(study), generation_line(study),
        "#### Table 1: in-domain (coco test)", metrics_table(study, ("coco",), model_label),
        *hallucination_section(study),
        "#### Tables 2-3: out-of-domain", metrics_table(study, ("nocaps", "cc3m"), model_label), "",
        metrics_table(study, ("vizwiz", "textcaps"), model_label),
        "#### nocaps by domain", nocaps_domain_table(study, model_label),
        "#### Table 4: trainable parameters and training energy", energy_table(checkpoints),
    ]
    if with_checks:
        parts += ["#### The paper's findings, checked on these results",
                  "Coco CIDEr unless said; thresholds from issue #20 (`captionlab/evaluation/findings.py`).",
                  "\n".join(findings_lines(check_findings(cider_scores(study))))]
        parts += ["#### Checks", "\n".join(f"- {line}" for line in checks(study, checkpoints))]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default=str(paths.CHECKPOINTS_DIR / "embedded"))
    parser.add_argument("--readme", help="README.md whose embedded-study section to regenerate")
    args = parser.parse_args(argv)
    text = render(Path(args.checkpoints))
    (Path(args.checkpoints) / "results" / "tables.md").write_text(text)
    if args.readme:
        readme = Path(args.readme)
        content = readme.read_text()
        if START not in content or END not in content:
            print(f"error: {readme} has no {START} ... {END} section")
            return 2
        content = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}{END}", content, flags=re.S)
        readme.write_text(content)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

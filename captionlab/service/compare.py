"""Side-by-side captioning: which strategies a model has, loading them once, captioning images.

    slots = discover_strategies(settings)          # every strategy, available or with the reason why not
    result = compare_images(settings, ["a.png"])   # captions, words, batch ms per image (+ per-image scores)
    caption_image(settings, "a.png")               # {strategy key: caption, "errors": {key: why}}: the `caption` API
    discover_runs()                                # this workspace's runs that can caption (finished or best/)
    compare_images(settings, ["a.png"], runs=[run_id])   # ... and with those runs beside the served strategies

Discovery only looks at files (no torch). The captioners are loaded on first use, once per
settings, on one shared base model (`captionlab.captioner.load_captioners`), and captioning is
serialised: the strategies of a shared base switch by mutating it.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from captionlab.artifacts import search_artifact
from captionlab.names import ARTIFACT_CARD, strategy_traits
from captionlab.safety.images import ImageRejected, open_upload
from captionlab.service.catalog import COMPARE_ORDER, strategy_label
from captionlab.service.settings import AppSettings

LATENCY_LABEL = "ms per image (batch mean)"  # the latency column: a batch's time over its images, not one image's
CUT_MARK = "[cut]"  # after a caption that reached max_new_tokens unfinished (table) and before the note saying so
MAX_IMAGES = 16  # per request: captioning is serialised, so one request must not hold the model for long
RUN_KEY_PREFIX = "run:"  # a workspace run's key among the strategy keys of a comparison (and of the caption API)
EMBEDDED_WORLD_NOTE = (
    "These are the embedded miniature study's models: they have only ever seen the embedded caption world "
    "(rendered scenes of simple shapes and a few objects), so on a photo they write a confident caption of that "
    "world, not of the photo. Serve real weights (`python app.py --model llava-1.5-7b --checkpoints DIR`) for photos.")
EMBEDDED_CLIP_REASON = ("not meaningful: the embedded 48-pixel CLIP only knows the embedded world, so its score of a "
                        "caption on an uploaded photo says nothing about the photo")


class ImageError(ImageRejected):
    """An upload that is not a usable image (or a request without one); the message names the file."""


@dataclass(frozen=True)
class StrategySlot:
    """One column of the comparison: a strategy (or the CLIP-Captioner) and whether it can caption."""

    key: str
    label: str
    artifact: Path | None
    available: bool
    reason: str = ""


@dataclass
class CompareResult:
    """Captions of every strategy for every image, as table rows, plus what the scores mean."""

    names: list[str]  # one distinct label per captioned image (its file name, numbered when repeated)
    captions: dict[str, list[str]]  # strategy key -> one caption per image (available strategies only)
    rows: list[dict]
    references: dict[str, list[str]] = field(default_factory=dict)  # image name -> references
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per file that is not a usable image
    files: list[str] = field(default_factory=list)  # the captioned files, in the order of `names`
    out_of_world: list[str] = field(default_factory=list)  # uploads (no references) the embedded models captioned


# --- discovery (files only) --------------------------------------------------------------------


def missing_checkpoint_message(settings: AppSettings, key: str) -> str:
    return (f"no trained checkpoint for {settings.model_label} ({strategy_label(key)}) — train it in the Train "
            f"tab or run `python -m train zoo`")


def base_model_problem(settings: AppSettings) -> str | None:
    """Why the base model cannot be loaded on this machine, or None when its weights are here."""
    from captionlab.models.registry import ModelNotFoundError, get_model_spec

    built = (Path(settings.model) / "config.json").is_file() or _registry_has(settings.model)
    if settings.is_embedded and not built:
        return (f"the embedded model is not built yet ({settings.model} is missing): "
                f"run `python -m train zoo` to build the embedded study")
    try:
        spec = get_model_spec(settings.model)
    except ModelNotFoundError as exc:
        return str(exc)
    if spec.weights_dir is not None:
        if (Path(spec.weights_dir) / "config.json").is_file():
            return None
        return f"weights for {spec.name!r} are expected in {spec.weights_dir} but it has no config.json" + (
            " (build the embedded study with `python -m train zoo`)" if settings.is_embedded else "")
    if spec.hf_id:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(spec.hf_id, "config.json"), str):
            return None
        return (f"weights for {spec.name!r} ({spec.hf_id}) are not in the local Hugging Face cache; captionlab "
                f"never downloads at run time: run `hf download {spec.hf_id}` on a machine with internet")
    return f"model {spec.name!r} has neither a weights folder nor a Hugging Face id"


def _registry_has(name: str) -> bool:
    from captionlab.models.registry import list_models

    return name in list_models()


def discover_strategies(settings: AppSettings) -> list[StrategySlot]:
    """Every paper strategy plus the CLIP-Captioner, each available or with the reason it is not."""
    base_problem = base_model_problem(settings)
    root = Path(settings.checkpoints) if settings.checkpoints else None
    return [_slot(settings, key, root, base_problem) for key in COMPARE_ORDER]


def _slot(settings: AppSettings, key: str, root: Path | None, base_problem: str | None) -> StrategySlot:
    """Strategy `key`'s column, asked of its traits (`captionlab.names.StrategyTraits`), never of its name."""
    traits, label = strategy_traits(key), strategy_label(key)
    if not traits.uses_llava_base:
        return _own_model_slot(key, label, root)
    if base_problem:
        return StrategySlot(key, label, None, False, base_problem)
    if not traits.trains:  # the base model as is
        return StrategySlot(key, label, None, True)
    artifact = search_artifact(root, key)
    if artifact is None:
        return StrategySlot(key, label, None, False, missing_checkpoint_message(settings, key))
    return StrategySlot(key, label, artifact, True)


def _own_model_slot(key: str, label: str, root: Path | None) -> StrategySlot:
    """A strategy with its own model (the CLIP-Captioner): it needs no LLaVA base, only its trained folder."""
    if importlib.util.find_spec("captionlab.baseline") is None:  # find_spec: importing it would import torch
        return StrategySlot(key, label, None, False,
                            f"{label} not available: captionlab.baseline is not in this version of captionlab")
    artifact = search_artifact(root, key)
    if artifact is None:
        where = root / key if root else "no --checkpoints folder"
        return StrategySlot(key, label, None, False,
                            f"no trained {label} checkpoint ({where}) — train it with "
                            f"`python -m train run --recipe embedded/{key}` or run `python -m train zoo`")
    return StrategySlot(key, label, artifact, True)


def run_key(run_id: str) -> str:
    return f"{RUN_KEY_PREFIX}{run_id}"


@dataclass(frozen=True)
class RunSlot:
    """A run of this workspace that can caption: its best (else last) artifact, labelled by the run's name."""

    run_id: str
    name: str
    strategy: str
    model: str
    artifact: Path

    @property
    def key(self) -> str:
        return run_key(self.run_id)

    @property
    def label(self) -> str:
        return f"{self.name} (run, {strategy_label(self.strategy)})"


def discover_runs() -> list[RunSlot]:
    """The workspace's runs, newest first, that finished or kept a best checkpoint and hold an artifact."""
    from captionlab.training import runs_db
    from captionlab.training.run_folder import is_complete_checkpoint

    try:
        runs = runs_db.list_runs()
    except Exception:  # no registry yet (a fresh workspace) or one being written: no runs to offer
        return []
    slots = []
    for run in runs:
        folder, strategy = Path(run.get("run_dir") or ""), run.get("strategy") or ""
        if not strategy or not folder.is_dir():
            continue
        if run.get("state") != "finished" and not is_complete_checkpoint(folder / "best"):
            continue
        artifact = search_artifact(folder, strategy)
        if artifact is not None:
            slots.append(RunSlot(run["run_id"], run.get("name") or run["run_id"], strategy, run.get("model") or "",
                                 artifact))
    return slots


def chosen_runs(run_ids: list[str] | None) -> list[RunSlot]:
    """The RunSlots of `run_ids` (ids as discover_runs lists them), in that order; ImageError names an unknown one."""
    if not run_ids:
        return []
    known = {slot.run_id: slot for slot in discover_runs()}
    unknown = [run_id for run_id in run_ids if run_id not in known]
    if unknown:
        raise ImageError(f"no finished run (or run with a best checkpoint) in this workspace is called "
                         f"{', '.join(map(repr, unknown))}; choose among: {', '.join(known) or 'none yet'}")
    return [known[run_id] for run_id in dict.fromkeys(run_ids)]


def uses_embedded_clip(settings: AppSettings) -> bool:
    """Whether CLIP-S is computed with the embedded tiny CLIP (`<checkpoints>/clip/` of the embedded study)."""
    from captionlab.service.settings import EMBEDDED_DIR

    if not settings.checkpoints:
        return False
    folder = Path(settings.checkpoints) / "clip"
    return (folder / "config.json").is_file() and folder.resolve() == (EMBEDDED_DIR / "clip").resolve()


# --- images ------------------------------------------------------------------------------------


def open_image(path: str | Path):
    """An uploaded file as an RGB PIL image (`captionlab.safety.images.open_upload`), else ImageError."""
    try:
        return open_upload(path)
    except ImageError:
        raise
    except ImageRejected as exc:
        raise ImageError(str(exc)) from None


def open_images(files: list[str | Path]) -> tuple[list, list[int], list[str]]:
    """(images, the index in `files` of each, one message per file that could not be used)."""
    images, kept, errors = [], [], []
    for index, file in enumerate(files):
        try:
            images.append(open_image(file))
            kept.append(index)
        except ImageError as exc:
            errors.append(str(exc))
    return images, kept, errors


def image_labels(files: list[str | Path]) -> list[str]:
    """Each file's name, numbered from its second use (normal.png, normal.png (2)): uploads from different
    folders may share a name, and each image's table rows must still be told apart."""
    labels: list[str] = []
    for file in files:
        name = Path(file).name
        label, count = name, 1
        while label in labels:
            count += 1
            label = f"{name} ({count})"
        labels.append(label)
    return labels


# --- loaded captioners -------------------------------------------------------------------------


class CaptionerPool:
    """The captioners of one AppSettings, loaded on first use and then kept."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.lock = threading.Lock()
        self.captioners: dict | None = None
        self.load_errors: dict[str, str] = {}
        self.load_seconds = 0.0
        self.runs: dict[str, object] = {}  # run key -> its captioner (its own copy of its model), once loaded

    def load(self) -> dict:
        """key -> captioner for every available slot (called with the lock held)."""
        if self.captioners is not None:
            return self.captioners
        started = time.perf_counter()
        slots = self._without_damaged_files({s.key: s for s in discover_strategies(self.settings) if s.available})
        captioners: dict = {}
        llava = {k: s.artifact for k, s in slots.items() if strategy_traits(k).uses_llava_base}
        if llava:
            captioners.update(self._load_llava(llava))
        for key in [k for k in slots if k not in llava]:  # own models: the CLIP-Captioner
            try:
                from captionlab.strategies import strategy_class

                captioners[key] = strategy_class(key).load_captioner(slots[key].artifact, self.settings.device)
            except Exception as exc:  # a broken baseline must not take the LLaVA columns down
                from captionlab.load_failures import describe_load_failure

                self.load_errors[key] = (f"{slots[key].label} failed to load: "
                                         f"{describe_load_failure(slots[key].artifact, exc)}")
        self.captioners = captioners
        self.load_seconds = time.perf_counter() - started
        return captioners

    def _without_damaged_files(self, slots: dict[str, StrategySlot]) -> dict[str, StrategySlot]:
        """The slots whose files match the checkpoints' manifest.json (when it has one); each other one gets a
        load error naming the files that differ, and is not loaded (a damaged weight file captions nonsense)."""
        from captionlab.safety.manifest import MANIFEST_NAME, damaged_under, manifest_problems, repair_hint

        root = Path(self.settings.checkpoints) if self.settings.checkpoints else None
        problems = manifest_problems(root) if root else {}
        if MANIFEST_NAME in problems:
            self.load_errors[MANIFEST_NAME] = f"{root / MANIFEST_NAME}: {problems[MANIFEST_NAME]}"
        kept = {}
        for key, slot in slots.items():
            damaged = damaged_under(problems, root, _folders_used_by(self.settings, slot)) if problems else []
            if damaged:
                self.load_errors[key] = (f"{slot.label} not loaded: its files differ from {root / MANIFEST_NAME}: "
                                         f"{'; '.join(damaged)}; {repair_hint(root)}")
            else:
                kept[key] = slot
        return kept

    def _load_llava(self, artifacts: dict[str, Path | None]) -> dict:
        from captionlab.captioner import GenerationSettings, load_captioners
        from captionlab.load_failures import describe_load_failure
        from captionlab.models.registry import get_model_spec

        spec = get_model_spec(self.settings.model)
        generation = GenerationSettings(max_new_tokens=self.settings.max_new_tokens, compile_prefill=False)
        failures: dict[str, str] = {}  # each strategy loads on its own: a broken one is named, the rest caption
        try:
            captioners = load_captioners(spec, artifacts, generation, device=self.settings.device, failures=failures)
        except Exception as exc:  # the base model itself
            message = describe_load_failure(None, exc)
            self.load_errors.update({key: message for key in artifacts})
            return {}
        self.load_errors.update({key: f"{strategy_label(key)} failed to load: {why}" for key, why in failures.items()})
        return captioners

    def caption(self, images: list) -> tuple[dict[str, list[str]], dict[str, float], dict[str, str]]:
        """(captions per key, milliseconds per image per key, error per key) for `images`."""
        done = self.caption_details(images)
        return done.captions, done.latency, done.errors

    def _load_run(self, run: RunSlot):
        """The captioner of a workspace run: its own model (the run's, which may not be the served one) with the run's
        artifact loaded, so that it never collides with the served strategy of the same name on the shared base."""
        from captionlab.strategies import get_strategy, strategy_class

        if not strategy_traits(run.strategy).uses_llava_base:  # its own model (the CLIP-Captioner)
            return strategy_class(run.strategy).load_captioner(run.artifact, self.settings.device)
        from captionlab.captioner import GenerationSettings, LlavaCaptioner
        from captionlab.models.loading import load_model
        from captionlab.models.registry import get_model_spec

        spec = get_model_spec(run.model or self.settings.model)
        loaded = load_model(spec, device=self.settings.device)
        strategy = get_strategy(run.strategy)
        if strategy.needs_artifact():  # zero-shot is the base as is
            loaded.model = strategy.load(loaded.model, spec, run.artifact, loaded.tokenizer)
        loaded.model.eval()
        generation = GenerationSettings(max_new_tokens=self.settings.max_new_tokens, compile_prefill=False)
        return LlavaCaptioner(loaded, strategy, generation)

    def _caption_runs(self, images: list, runs: list[RunSlot], done: "Captioned") -> None:
        for run in runs:
            started = time.perf_counter()
            try:
                if run.key not in self.runs:
                    self.runs[run.key] = self._load_run(run)
                    done.load_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                captioner = self.runs[run.key]
                done.captions[run.key] = list(captioner.caption(images))
            except Exception as exc:
                done.errors[run.key] = f"run {run.name} could not caption: {type(exc).__name__}: {exc}"
                continue
            done.latency[run.key] = (time.perf_counter() - started) * 1000 / max(1, len(images))
            cut = getattr(captioner, "last_cut", None)
            if cut is not None and len(cut) == len(images):
                done.cut[run.key] = [bool(flag) for flag in cut]

    def caption_details(self, images: list, runs: list[RunSlot] | None = None) -> "Captioned":
        """What `caption` returns, plus which captions hit the token limit and whether this call loaded the models;
        `runs`: workspace runs to caption with too (keys `run:<id>`)."""
        with self.lock:
            loaded_now = self.captioners is None
            captioners = self.load()
            done = Captioned(errors=dict(self.load_errors), load_seconds=self.load_seconds if loaded_now else 0.0)
            self._caption_runs(images, runs or [], done)
            from captionlab.models.vision_sharing import shared_vision_passes

            # every LLaVA captioner's vision tower is frozen and equal: one tower pass per image for all of them
            models = [c.model for c in captioners.values() if hasattr(c, "model")]
            with shared_vision_passes(models):
                for key, captioner in captioners.items():
                    started = time.perf_counter()
                    try:
                        done.captions[key] = list(captioner.caption(images))
                    except Exception as exc:
                        done.errors[key] = f"captioning failed: {type(exc).__name__}: {exc}"
                        continue
                    done.latency[key] = (time.perf_counter() - started) * 1000 / max(1, len(images))
                    cut = getattr(captioner, "last_cut", None)  # LLaVA captioners keep it; the baseline does not
                    if cut is not None and len(cut) == len(images):
                        done.cut[key] = [bool(flag) for flag in cut]
            return done


def _folders_used_by(settings: AppSettings, slot: StrategySlot) -> list[Path | None]:
    """The folders a slot's captioner loads: its artifact, and the base model (LLaVA) or CLIP encoder (baseline)."""
    from captionlab.paths import PROJECT_ROOT

    folders = [slot.artifact]
    if not strategy_traits(slot.key).uses_llava_base:  # its own model: the CLIP encoder its card names
        try:
            encoder = json.loads((slot.artifact / ARTIFACT_CARD).read_text()).get("encoder")
        except (OSError, ValueError, TypeError, AttributeError):
            encoder = None
        if isinstance(encoder, str):
            folders.append(PROJECT_ROOT / encoder)  # an absolute encoder path stays absolute
        return folders
    from captionlab.models.registry import get_model_spec

    try:
        folders.append(get_model_spec(settings.model).weights_dir)
    except Exception:  # no spec: discovery already said so
        pass
    return folders


@dataclass
class Captioned:
    """One `CaptionerPool.caption_details` call: captions, ms per image and errors per key; `cut`: per key, which
    captions used all max_new_tokens unfinished; `load_seconds`: the model loading this call did (0: loaded before)."""

    captions: dict[str, list[str]] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cut: dict[str, list[bool]] = field(default_factory=dict)
    load_seconds: float = 0.0


_pools: dict[AppSettings, CaptionerPool] = {}
_pools_lock = threading.Lock()


def get_pool(settings: AppSettings) -> CaptionerPool:
    with _pools_lock:
        if settings not in _pools:
            _pools[settings] = CaptionerPool(settings)
        return _pools[settings]


# --- the two entry points ----------------------------------------------------------------------


API_ERRORS_KEY = "errors"  # the caption API's entry {strategy key: why} for captioners that did not caption


def caption_image(settings: AppSettings, path: str | Path, runs: list[str] | None = None) -> dict:
    """{strategy key: caption} for one image file, for every strategy that can caption (the API); `runs`: ids of
    workspace runs (discover_runs) to caption with too, keyed `run:<id>`; plus {"errors": {key: why}} when a
    served strategy or a chosen run failed to load or to caption."""
    chosen = chosen_runs(runs)
    image = open_image(path)
    done = get_pool(settings).caption_details([image], chosen)
    answer: dict = {key: texts[0] for key, texts in done.captions.items()}
    if done.errors:
        answer[API_ERRORS_KEY] = dict(done.errors)
    return answer


def batch_latency_note(count: int) -> str:
    """What the latency column means when several images were captioned together."""
    return (f"{LATENCY_LABEL}: each captioner captions the {count} images as one batch; its batch time divided by "
            f"{count} is shown on each of its rows (the same for every image, not a per-image measurement)")


def compare_images(settings: AppSettings, files: list[str | Path], references: list[list[str] | None] | None = None,
                   corpus: dict[str, list[str]] | None = None, score: bool = True,
                   runs: list[str] | None = None) -> CompareResult:
    """Caption `files` with every strategy; score them where possible.

    references: per file, its reference captions (gallery images) or None. corpus: references of
    a set of images (image id -> captions) whose document frequencies CIDEr uses; see `scoring`.
    runs: ids of workspace runs (discover_runs) captioned beside the served strategies, labelled by run name.
    Raises ImageError when no file is a usable image; unusable files among good ones become notes.
    With the embedded models, the uploads among the files (those without references) are listed in
    `out_of_world`, and their CLIP-S, from the embedded CLIP, is flagged not meaningful (`clip_note`).
    """
    if not files:
        raise ImageError("no image given: upload one or more images, or pick one from the gallery")
    if len(files) > MAX_IMAGES:
        raise ImageError(f"{len(files)} images at once is too many; at most {MAX_IMAGES}")
    images, kept, errors = open_images(files)
    if not images:
        raise ImageError("; ".join(errors))
    names = image_labels([files[index] for index in kept])
    kept_refs = [references[index] if references is not None and index < len(references) else None for index in kept]
    chosen = chosen_runs(runs)
    done = get_pool(settings).caption_details(images, chosen)
    captions, latency, errors_by_key = done.captions, done.latency, done.errors
    result = CompareResult(names=names, captions=captions, rows=[], skipped=list(errors),
                           files=[str(files[index]) for index in kept])
    if done.load_seconds and captions:  # only on the request that loaded them: later ones did not wait for it
        result.notes.append(f"this request first loaded the models: {done.load_seconds:.1f} s (once per app start)")
    cut_labels = [strategy_label(key) for key in COMPARE_ORDER if any(done.cut.get(key, []))]
    cut_labels += [run.label for run in chosen if any(done.cut.get(run.key, []))]
    if cut_labels:
        result.notes.append(f"{CUT_MARK} {', '.join(cut_labels)}: caption(s) used all {settings.max_new_tokens} new "
                            f"tokens unfinished and were cut there (so their word counts are short); the app's "
                            f"--max-new-tokens sets the limit")
    if len(images) > 1 and captions:
        result.notes.append(batch_latency_note(len(images)))
    scores: dict[str, dict[str, list]] = {}
    if score and captions:
        from captionlab.service import scoring

        scores, notes = scoring.score_captions_per_image(settings, images, captions, kept_refs, corpus)
        result.notes.extend(notes)
    slots = discover_strategies(settings) + [StrategySlot(run.key, run.label, run.artifact, True) for run in chosen]
    uploads = [index for index in range(len(names)) if not kept_refs[index]]
    if settings.is_embedded and uploads:
        result.out_of_world = [names[index] for index in uploads]
    clip_meaningless = uses_embedded_clip(settings)
    for index, name in enumerate(names):
        if kept_refs[index]:
            result.references[name] = list(kept_refs[index])
        for slot in slots:
            row = {"image": name, "key": slot.key, "strategy": slot.label, "caption": "", "words": None,
                   "latency_ms": None, "CIDEr": None, "CLIP-S": None, "cut": False, "clip_note": ""}
            if slot.key in captions:
                text = captions[slot.key][index]
                cut = done.cut.get(slot.key, [False] * len(names))[index]
                row.update(caption=text, words=len(text.split()), latency_ms=round(latency[slot.key], 1), cut=cut)
                for metric, digits in (("CIDEr", 1), ("CLIP-S", 3)):  # as the paper prints them
                    values = scores.get(metric, {}).get(slot.key)
                    row[metric] = None if values is None or values[index] is None else round(values[index], digits)
                if clip_meaningless and not kept_refs[index] and row["CLIP-S"] is not None:
                    row["clip_note"] = EMBEDDED_CLIP_REASON
            else:
                row["caption"] = errors_by_key.get(slot.key) or slot.reason or "not loaded"
            result.rows.append(row)
    return result

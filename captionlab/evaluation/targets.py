"""What is evaluated: the model and the checkpoint an evaluation loads, resolved from what it was given.

    target = resolve_model("embedded")                      # ModelTarget: label, embedded?, spec
    artifact = resolve_checkpoint(target, "lora", "lora-1")  # a run id -> its best (else last) artifact
    artifact, why = discover_checkpoint(target, "dora")      # grid mode: (None, why) when there is none

- the model: a registry name, a model folder, or `embedded` (the embedded study's `base/`, built by
  `python -m train zoo`); with `need_weights`, its weights must be on this machine.
- the checkpoint: zero-shot needs none (`Strategy.needs_artifact`); every other strategy needs its
  artifact, given as a run folder (its `best/artifact/`, else `last/artifact/`), a run id (or a
  unique prefix of one), an artifact folder, or a checkpoints folder holding `strategies/<key>/`
  or `<key>/` (`captionlab.artifacts` searches); for the embedded model the shipped ones in
  `checkpoints/embedded/` are used when none is given. The CLIP-Captioner baseline is
  `strategy="clip_captioner"` with its folder as the checkpoint.
- grid mode (`discover_checkpoint`): a checkpoints folder, then the shipped embedded checkpoints,
  then the newest finished run of this model and strategy in the workspace.

Nothing here loads a model or runs anything: `evaluator` does, with what this module resolves.
Importing it is cheap (the model registry, runs database and strategies are imported where needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captionlab import paths
from captionlab.artifacts import ArtifactNotFound, search_artifact
from captionlab.artifacts import find_artifact as _find_artifact
from captionlab.names import CLIP_CAPTIONER, EMBEDDED_MODEL, STUDY_ORDER  # noqa: F401  (CLIP_CAPTIONER: callers)


class EvaluationError(Exception):
    """An evaluation that cannot run as asked (model, checkpoint or dataset); the message says why."""


@dataclass(frozen=True)
class ModelTarget:
    """A resolved model: its label in results, whether it is the embedded one, and its spec."""

    label: str
    embedded: bool
    spec: Any = None  # captionlab.models.registry.ModelSpec (None for the CLIP-Captioner)


def _embedded_dir() -> Path:
    return paths.CHECKPOINTS_DIR / EMBEDDED_MODEL


def is_shipped_checkpoint(artifact: Path) -> bool:
    """Whether the resolved `artifact` is one of the embedded study's shipped checkpoints."""
    return artifact.is_relative_to(_embedded_dir().resolve())


def is_embedded_model(model: str | Path) -> bool:
    text = str(model)
    if text == EMBEDDED_MODEL:
        return True
    try:
        return Path(text).expanduser().resolve() == (_embedded_dir() / "base").resolve()
    except OSError:
        return False


def resolve_model(model: str | Path, *, need_weights: bool = True) -> ModelTarget:
    """The model's spec (and, with `need_weights`, a check that its weights are on this machine)."""
    from captionlab.models.registry import ModelNotFoundError, get_model_spec, list_models

    text = str(model)
    embedded = is_embedded_model(text)
    source: str | Path = text
    if text == EMBEDDED_MODEL and EMBEDDED_MODEL not in list_models():
        source = _embedded_dir() / "base"
        if not (source / "config.json").is_file():
            raise EvaluationError(f"the embedded model is not built yet ({source} is missing): "
                                  "run `python -m train zoo` to build the embedded study")
    try:
        spec = get_model_spec(source)
        if need_weights:
            from captionlab.models.loading import weights_folder

            weights_folder(spec)
    except ModelNotFoundError as exc:
        raise EvaluationError(str(exc)) from None
    if embedded:
        label = EMBEDDED_MODEL
    elif Path(text).expanduser().is_dir():
        label = spec.name
    else:
        label = text
    return ModelTarget(label=label, embedded=embedded, spec=spec)


def find_artifact(folder: str | Path, strategy: str) -> Path:
    """The artifact folder of `strategy` in a run folder, artifact folder or checkpoints folder
    (`captionlab.artifacts.find_artifact`, its error an EvaluationError)."""
    try:
        return _find_artifact(folder, strategy)
    except ArtifactNotFound as exc:
        raise EvaluationError(str(exc)) from None


def _strategy(key: str):
    """The registered class of `key` (asked for its capabilities, never compared by name)."""
    from captionlab.strategies import StrategyError, strategy_class

    try:
        return strategy_class(key)
    except StrategyError as exc:
        raise EvaluationError(str(exc)) from None


def _checkpoint_path(checkpoint: str | Path) -> Path:
    """A path, or a run id (or a unique prefix of one, as `runs show` takes) of the workspace's runs."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path.resolve()
    if len(path.parts) == 1:
        run = paths.runs_dir() / str(checkpoint)
        if run.exists():
            return run.resolve()
        found = _registered_run(str(checkpoint))
        if found is not None:
            return found
    raise EvaluationError(f"checkpoint not found: {path.resolve()} (give a run folder, a run id under "
                          f"{paths.runs_dir()}, or an artifact folder)")


def _registered_run(prefix: str) -> Path | None:
    """The folder of the one registered run whose id starts with `prefix` (None if no run does)."""
    from captionlab.training import runs_db

    try:
        run_dir = runs_db.find_run_dir(prefix)
    except runs_db.AmbiguousRunError as exc:
        raise EvaluationError(f"checkpoint {exc}: give more of the id") from None
    return None if run_dir is None else run_dir.resolve()


def resolve_checkpoint(target: ModelTarget, strategy: str, checkpoint: str | Path | None) -> Path | None:
    """The artifact folder to load for `strategy` (None for one that needs none: zero-shot)."""
    if not _strategy(strategy).needs_artifact():
        if checkpoint is not None:
            raise EvaluationError(f"{strategy} uses the base model as is: it takes no --checkpoint")
        return None
    if checkpoint is not None:
        return find_artifact(_checkpoint_path(checkpoint), strategy)
    if target.embedded:
        shipped = search_artifact(_embedded_dir(), strategy)
        if shipped is not None:
            return shipped
        where = f"{_embedded_dir() / 'strategies' / strategy} and {_embedded_dir() / strategy} are missing"
        raise EvaluationError(f"no trained {strategy} checkpoint for the embedded model ({where}): "
                              f"pass --checkpoint RUN_OR_FOLDER, or {_how_to_train_embedded(strategy)}")
    raise EvaluationError(f"strategy {strategy} needs a trained checkpoint: pass --checkpoint RUN_OR_FOLDER "
                          f"(a run folder, a run id, or an artifact folder)")


def _how_to_train_embedded(strategy: str) -> str:
    """Advice that holds for `strategy`: the zoo rebuilds only the strategies the embedded study ships."""
    from captionlab.strategies import STRATEGIES

    if strategy in STUDY_ORDER:
        return "build the embedded study with `python -m train zoo`"
    command = f"python -m train run --recipe embedded/lora strategy={strategy}"
    if getattr(STRATEGIES.get(strategy), "needs_cuda", False):  # QLoRA's 4-bit base: bitsandbytes, on CUDA only
        return (f"train one on a CUDA GPU with bitsandbytes (which {strategy} needs, so `python -m train zoo`, "
                f"on the CPU, never builds it): `{command} device=cuda`")
    return f"train one with `{command}` (`python -m train zoo` does not build {strategy})"


def discover_checkpoint(target: ModelTarget, strategy: str, checkpoints: str | Path | None = None,
                        model_arg: str | None = None) -> tuple[Path | None, str | None]:
    """(artifact, None) or (None, why there is none) for grid mode: a checkpoints folder
    (`<dir>/strategies/<key>/` or `<dir>/<key>/`), the shipped embedded ones, then the newest
    finished run of this model and strategy in the workspace."""
    if not _strategy(strategy).needs_artifact():
        return None, None
    looked = []
    if checkpoints is not None:
        root = Path(checkpoints).expanduser().resolve()
        names = [f"strategies/{strategy}", strategy]
        for name in names:
            folder = root / name
            if folder.is_dir():
                try:
                    return find_artifact(folder, strategy), None
                except EvaluationError as exc:
                    looked.append(str(exc))
        looked.append(f"nothing under {root}/{{{','.join(names)}}}")
    if target.embedded:
        try:
            return resolve_checkpoint(target, strategy, None), None
        except EvaluationError as exc:
            looked.append(str(exc))
    run = _newest_finished_run({target.label, model_arg or target.label}, strategy)
    if run is not None:
        return run, None
    looked.append(f"no finished {strategy} run of {target.label} in the workspace")
    return None, "; ".join(looked)


def _newest_finished_run(models: set[str], strategy: str) -> Path | None:
    try:
        from captionlab.training.runs_db import list_runs

        runs = list_runs()
    except Exception:  # no runs database yet, or an older one: nothing to find
        return None
    for run in runs:  # newest first
        if run.get("strategy") == strategy and run.get("model") in models and run.get("state") == "finished":
            try:
                return find_artifact(run["run_dir"], strategy)
            except EvaluationError:
                continue
    return None

"""What a run needs, checked before its run folder exists: the model's weights and the dataset's files.

Why. Loading a 7B model takes minutes and a run folder is a record in `runs`; a wrong dataset path or weights
that are not on this machine should cost neither. The trainer would fail on the same things later (it loads the
model first, so a wrong dataset path was reported only after the weights had loaded), leaving a failed run behind
and a traceback where one line says what to do.

    preflight(config)   # raises ModelNotFoundError or DatasetError with a message that says how to fix it
"""

from __future__ import annotations

from pathlib import Path

from captionlab.data.errors import DatasetError
from captionlab.training.config import TrainConfig


def preflight(config: TrainConfig) -> None:
    """Raise if the run cannot start: no weights for the model (LLaVA strategies), or a dataset whose annotation
    file or image folder is missing. Generates the embedded world on first use, as the trainer would."""
    _check_model(config)
    _check_dataset(config)


def _check_model(config: TrainConfig) -> None:
    from captionlab.models.loading import weights_folder
    from captionlab.models.registry import get_model_spec
    from captionlab.strategies import strategy_class

    if not strategy_class(config.strategy).uses_llava_base:  # its own model, trained from scratch: no weights to read
        return

    weights_folder(get_model_spec(config.model))


def run_dataset(config: TrainConfig):
    """The dataset a run trains on (a `DatasetSpec`): its name or FORMAT:PATH, with the run's images folder and
    datasets config; the embedded world is written on first use. The trainer reads its splits from this too."""
    from captionlab.data.datasets import ensure_embedded_world, resolve_dataset

    ensure_embedded_world(config.dataset, config.datasets_config)
    return resolve_dataset(config.dataset, Path(config.images) if config.images else None,
                           Path(config.datasets_config) if config.datasets_config else None)


def _check_dataset(config: TrainConfig) -> None:
    spec = run_dataset(config)
    if not spec.annotations.exists():
        raise DatasetError(f"dataset {config.dataset!r}: annotation file not found: {spec.annotations}")
    if not spec.images.is_dir():
        raise DatasetError(f"dataset {config.dataset!r}: image folder not found: {spec.images}"
                           + ("" if config.images else " (give the folder with images=DIR)"))

"""Linear probes of the tiny CLIP's vision tower: does it read what the pictures show?

    result = probe_vision_tower(clip_model, world_folder, image_size=64)
    result["kind/coco"]   # share of coco val+test images whose main object's kind the probe names

A linear classifier (ridge) is fitted on the patch tokens LLaVA's projector reads (`hidden_states[-2]`,
flattened: what the LLM is given) of the coco train images and the brief pretraining pool (every kind, the novel
ones too, and every flavour: written words, degraded photos, sunsets, illustrations), then scored on the
evaluated splits: the main object's kind (its first group, drawn large) on coco val+test and on each other
benchmark's val split, its colour and the setting on coco, and the written word on TextCaps (fitted on the pool's
pictures with a word). Labels come from the world's scenes, never from captions. `bench/clip_probe.py` trains
tower variants and probes them with this; the zoo's `probe` step records the shipped tower's result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from captionlab.embedded.clip import LLAVA_FEATURE_LAYER


def load_u8(paths: list[Path], size: int) -> torch.Tensor:
    """Images resized (bicubic, as CLIPImageProcessor) to size, uint8 NCHW."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out


def normalise(u8: torch.Tensor) -> torch.Tensor:
    return (u8.float() / 255.0 - 0.5) / 0.5


@torch.no_grad()
def features(model, images: torch.Tensor, layer: int = LLAVA_FEATURE_LAYER) -> torch.Tensor:
    """The patch tokens of hidden state `layer` (CLS dropped, as LLaVA's "default" selection), flattened per image."""
    model.eval()
    return torch.cat([model.vision_model(pixel_values=normalise(images[start:start + 250]),
                                         output_hidden_states=True).hidden_states[layer][:, 1:].flatten(1)
                      for start in range(0, len(images), 250)])


class LinearProbe:
    """Linear classifiers on one feature matrix: ridge regression onto one-hot labels, solved in the kernel form
    (features outnumber images) from one eigendecomposition shared by every label and every L2 strength. The
    strength is picked on a fixed random fifth (at most 500) of the rows (never on the test rows), then the
    classifier is refitted on all rows."""

    STRENGTHS = (1e-3, 1e-2, 1e-1, 1.0)  # times the number of rows

    def __init__(self, train_x: torch.Tensor):
        x = train_x.float()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        self.x = (x - self.mean) / self.std
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        held = min(500, len(x) // 5)
        self.fit_rows, self.held_rows = order[held:], order[:held]
        kernel = (self.x @ self.x.T).double()
        self.full = torch.linalg.eigh(kernel)
        self.part = torch.linalg.eigh(kernel[self.fit_rows][:, self.fit_rows])
        self.cross = kernel[self.held_rows][:, self.fit_rows]

    @staticmethod
    def _dual(eigen, targets: torch.Tensor, l2: float) -> torch.Tensor:
        values, vectors = eigen
        return vectors @ ((vectors.T @ targets) / (values + l2 * len(values)).unsqueeze(1))

    def predict(self, train_y: torch.Tensor, tests: list[torch.Tensor], classes: int) -> list[torch.Tensor]:
        """Fit on (rows, train_y) and return each test set's predicted classes."""
        targets = torch.nn.functional.one_hot(train_y, classes).double()

        def holdout(l2: float) -> float:
            fitted = targets[self.fit_rows]
            centre = fitted.mean(0)
            scores = self.cross @ self._dual(self.part, fitted - centre, l2) + centre
            return float((scores.argmax(1) == train_y[self.held_rows]).float().mean())

        best = max(self.STRENGTHS, key=holdout)
        centre = targets.mean(0)
        weights = (self.x.T.double() @ self._dual(self.full, targets - centre, best))
        return [((((test.float() - self.mean) / self.std).double() @ weights) + centre).argmax(1) for test in tests]


def probe(train_x: torch.Tensor, train_y: torch.Tensor, tests: list[torch.Tensor], classes: int) -> list[torch.Tensor]:
    """One label's linear probe (see `LinearProbe`): the predicted class of every row of each test set."""
    return LinearProbe(train_x).predict(train_y, tests, classes)


def probe_sets(world: Path) -> dict[str, tuple[list[Path], list]]:
    """name -> (image paths, scenes): "fit" = coco train + the brief pretraining pool (every kind and flavour, as
    the tower's own pretraining saw), and the evaluated splits: coco val+test and each other benchmark's val."""
    from captionlab.data.datasets import load_records
    from captionlab.world.domains import make_example
    from captionlab.world.objects import world_examples

    manifest = json.loads((world / "world.json").read_text())
    config = world / "datasets.yaml"

    def domain(name: str, splits: tuple[str, ...]):
        records = [r for split in splits for r in load_records(name, split=split, config=config)]
        sizes = {k: int(v) for k, v in manifest["images"][name].items()}
        examples = world_examples(int(manifest["seed"]), sizes, name, [r.image_id for r in records])
        kept = [r for r in records if r.image_id in examples]
        return [Path(r.image_path) for r in kept], [examples[r.image_id].scene for r in kept]

    coco_paths, coco_scenes = domain("coco", ("train",))
    brief = sorted((world / "images" / "pretrain_brief").glob("*.png"))
    brief_scenes = [make_example("brief", "train", int(path.stem), int(manifest["seed"])).scene for path in brief]
    sets = {"fit": (coco_paths + brief, coco_scenes + brief_scenes), "coco": domain("coco", ("val", "test"))}
    for name in ("nocaps", "cc3m", "vizwiz", "textcaps"):
        sets[name] = domain(name, ("val",))
    return sets


def main_kind(scene) -> str:
    """The kind of the picture's main object: its first group, drawn large (the others small; world v3)."""
    return scene.objects[0].kind


def _accuracy(names: list[str], predicted: torch.Tensor, truth: list[str]) -> float:
    return round(float(np.mean([names[int(k)] == t for k, t in zip(predicted, truth)])), 3)


ProbeImages = tuple[dict[str, tuple[list[Path], list]], dict[str, torch.Tensor]]  # (probe_sets, uint8 images)


def load_probe_images(world: Path, image_size: int) -> ProbeImages:
    """Every probed image of `world` at image_size, with its scene: load once, probe several feature kinds."""
    sets = probe_sets(Path(world))
    return sets, {name: load_u8(paths_, image_size) for name, (paths_, _) in sets.items()}


def probe_vision_tower(model, world: Path, image_size: int, pixels: bool = False, layer: int = LLAVA_FEATURE_LAYER,
                       loaded: ProbeImages | None = None) -> dict:
    """Every probe's accuracy on `world` for a CLIP model (or, with pixels=True and model None, the raw pixels at
    image_size: the reference a tower should beat). Keys "kind/<benchmark>", "colour/coco", "setting/coco",
    "word/textcaps", and "n/<benchmark>" (images scored). `loaded`: `load_probe_images`' result, to reuse."""
    sets, images = loaded or load_probe_images(world, image_size)
    if pixels:  # the reference: the same probe on the raw pixels the tower is given
        feats = {name: normalise(x).flatten(1) for name, x in images.items()}
    else:
        feats = {name: features(model, x, layer) for name, x in images.items()}
    result = {f"n/{k}": len(v[0]) for k, v in sets.items() if k != "fit"}
    targets = {"kind": main_kind, "colour": lambda scene: scene.objects[0].colour,
               "setting": lambda scene: scene.setting}
    linear = LinearProbe(feats["fit"])
    for target, label_of in targets.items():
        fit_labels = [label_of(scene) for scene in sets["fit"][1]]
        names = sorted(set(fit_labels))
        evaluated = ("coco", "nocaps", "cc3m", "vizwiz", "textcaps") if target == "kind" else ("coco",)
        predictions = linear.predict(torch.tensor([names.index(v) for v in fit_labels]),
                                     [feats[name] for name in evaluated], len(names))
        for name, predicted in zip(evaluated, predictions):
            truth = [label_of(scene) for scene in sets[name][1]]
            result[f"{target}/{name}"] = _accuracy(names, predicted, truth)
    worded = [i for i, scene in enumerate(sets["fit"][1]) if scene.word]
    words = sorted({sets["fit"][1][i].word for i in worded})
    (predicted,) = probe(feats["fit"][worded], torch.tensor([words.index(sets["fit"][1][i].word) for i in worded]),
                         [feats["textcaps"]], len(words))
    result["word/textcaps"] = _accuracy(words, predicted, [scene.word for scene in sets["textcaps"][1]])
    return result

"""Evaluation: captioning metrics, CLIP-Score, the results store and the paper's numbers.

- `metrics`: BLEU-4, METEOR, ROUGE-L, CIDEr(-D), SPICE with pycocoevalcap's scorers, one PTB
  tokenization per evaluation, per-image scores and caption-length statistics.
- `spice`: where SPICE's Stanford CoreNLP jars come from, and why SPICE is unavailable when not.
- `clipscore`: CLIP-S and RefCLIP-S (Hessel et al., 2021) behind a small encoder interface.
- `results`: every evaluation as a row in the SQLite database, plus an atomic `results.json`.
- `reference_data`: the paper's published Tables 1-4, shipped in `reference/`.
- `targets`: what is evaluated: the model and the strategy's checkpoint (run folder, run id,
  artifact, or the embedded study's shipped ones), resolved before anything is loaded.
- `evaluator`: runs one evaluation (or a grid of them) on what `targets` resolved: captions
  (`generation`), metrics, CLIP-Score, and the results store.

Importing this package is cheap; the submodules import torch / pycocoevalcap where needed.
"""

"""The thin facade the web app calls: plain functions returning plain data, no gradio here.

- `settings`:   what the app serves (model, checkpoints folder, device) and the embedded default.
- `catalog`:    names and labels the UI needs before any model is loaded (no torch).
- `gallery`:    example images with references (shipped, or rendered from the embedded world).
- `compare`:    which strategies exist for a model, loading them once, captioning images side by side.
- `scoring`:    per-image CIDEr and CLIP-Score of captions (through captionlab.evaluation).
- `benchmarks`: the paper's Tables 1-3 and Fig. 2 beside this workspace's results; evaluation jobs.
- `energy`:     the paper's Table 4 beside the runs' measured energy.
- `runs`:       the Train tab's form, launches, progress and the list of runs (through the launcher).

Every module imports torch, transformers or the metrics only inside the functions that need them,
so importing the facade (and the UI above it) stays light.
"""

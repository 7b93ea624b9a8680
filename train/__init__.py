"""Training entry points (`python -m train ...`) and recipes (train/recipes/<model>/<strategy>.yaml)."""

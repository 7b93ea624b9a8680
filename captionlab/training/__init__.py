"""Training: batching, the recipe-driven trainer, run folders, energy, the runs registry and launcher."""

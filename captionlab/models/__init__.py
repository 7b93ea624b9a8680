"""Models: the registry of LLaVA variants (configs shipped as JSON files) and their loading."""

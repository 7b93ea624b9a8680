"""captionlab: should you fine-tune a multimodal LLM for your captions, and how?

A library, CLIs and a Gradio app that reproduce and extend "Personalizing Multimodal Large
Language Models for Image Captioning" (Bucciarelli et al.): zero-shot, prompt-learned,
prefix-tuned, LoRA, DoRA and fully fine-tuned LLaVA against a CLIP-Captioner baseline.

Run `python -m captionlab --help` for the command line. Importing this package is cheap:
heavy dependencies (torch, transformers) are imported by the modules that need them.
"""

__version__ = "0.1.0"

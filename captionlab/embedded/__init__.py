"""The embedded model family: the miniature of LLaVA that ships with captionlab.

Built from the embedded caption world (captionlab.world) on the CPU, in this order:
  1. a byte-level BPE tokenizer trained on the world's text (tokenizers.py);
  2. a tiny CLIP trained contrastively on the world's training images and captions (clip.py); its vision
     tower becomes the tiny LLaVA's vision encoder, as CLIP ViT-L is LLaVA's, and its two towers
     give the embedded CLIP-Score and the CLIP-Captioner's features;
  3. a tiny LLaVA (transformers' own LlavaForConditionalGeneration) pretrained in LLaVA-1.5's two
     stages: short captions under brief-description instructions (the world's "brief" pool, standing
     in for LCS-558K), then verbose instruction-style descriptions, so that like LLaVA it answers
     "Briefly caption the image" at length yet has a short-caption register inside (base.py).
`captionlab.zoo` runs these steps, personalises the base with every strategy and evaluates it.
"""

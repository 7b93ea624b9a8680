"""How long a generated caption may get: one default for the library, the CLIs and the app.

The paper states no limit. 256 new tokens lets LLaVA end its captions with its own end-of-sequence
token: the verbose zero-shot answers of an instruction-tuned MLLM (LLaVA-1.6's most) run well past
the 40 tokens captionlab used to allow, and a caption cut short changes BLEU (brevity), CIDEr-D
(length penalty) and CLIP-S. Greedy decoding stops at EOS, so a limit that is not reached costs
nothing; every result records its limit and how many captions reached it unfinished (`cut`).
"""

DEFAULT_MAX_NEW_TOKENS = 256

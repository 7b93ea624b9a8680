"""The embedded tokenizers: one BPE vocabulary for the tiny LLaVA and the tiny CLIP.

CLIP's text tower pools the hidden state at its end-of-text token, so the CLIP tokenizer is the
same vocabulary with `<|endoftext|>` appended to every text (transformers treats an end token of
id 2 as a legacy case, hence a separate token rather than LLaMA's </s>).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from captionlab.models.tokenizer import train_tokenizer

CLIP_END = "<|endoftext|>"


def build_llava_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": [CLIP_END]})
    return tokenizer


def clip_tokenizer_from(llava_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same vocabulary, each text closed by <|endoftext|> (no BOS), padded with <pad>."""
    core = llava_tokenizer.backend_tokenizer.__class__.from_str(llava_tokenizer.backend_tokenizer.to_str())
    end_id = llava_tokenizer.convert_tokens_to_ids(CLIP_END)
    core.post_processor = processors.TemplateProcessing(single=f"$A {CLIP_END}", special_tokens=[(CLIP_END, end_id)])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=CLIP_END, pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=64)

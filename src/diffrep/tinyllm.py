"""A tiny instruction-style causal LM, built offline with seeded weights, for tests and small studies.

It stands in for the caption-variant model of :mod:`diffrep.llmcaptions` (e.g. google/gemma-3-1b-it):
a transformers ``LlamaForCausalLM`` with 2 layers of width 32 and random weights, and a word-level
tokenizer over the given texts' words plus the instruction's, with a chat template (one user turn,
then the assistant's) like an instruction model's. It writes random word sequences (its
generation config suppresses every special token but the end of text): enough to run the rule, its
seeding and its file format, not to reword anything.

Same arguments, same bytes; safetensors only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from diffrep.fileio import staged_dir

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>", "<end>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def words_of(texts: Sequence[str]) -> list[str]:
    """The sorted lower-case words (letters and digits) of `texts`."""
    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower())})


def tiny_tokenizer(texts: Sequence[str]):
    """A word-level fast tokenizer over the words of `texts` (and the instruction's), with a chat template."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from diffrep.llmcaptions import INSTRUCTION

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *words_of([*texts, INSTRUCTION])])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("removed")]
    )
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<user>", "<assistant>", "<end>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_llm(out_dir: str | os.PathLike, seed: int = 0, texts: Sequence[str] | None = None) -> Path:
    """Write a random-weight tiny causal LM and its tokenizer to `out_dir` (``save_pretrained``).

    `texts`: the words the tokenizer knows (default: the mini dataset's caption corpus).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if texts is None:
        from diffrep import minidata

        texts = minidata.caption_corpus(seed)
    tokenizer = tiny_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    # random weights may pick a special token; an instruction model's would not: never sample one
    # but the end of the answer (generation_config.json), so every answer has a word
    model.generation_config.suppress_tokens = [
        tokenizer.convert_tokens_to_ids(t) for t in SPECIAL if t != tokenizer.eos_token
    ]
    with staged_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stray = [p for p in Path(tmp).rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        if stray:
            raise RuntimeError(f"save_pretrained wrote pickle files: {stray}")
    return Path(out_dir)

"""Copying mitigations of Somepalli et al. (NeurIPS 2023), as upstream defines them.

Train time (upstream datasets.py ``ObjectAttributeDataset.__getitem__``, ``--trainspecial``,
``--trainspecial_prob`` = p, ``--rand_noise_lam`` = λ):

- ``allcaps``: a uniformly random caption of the image's captions, on every draw;
- ``randrepl``: caption [0]; with probability p it is replaced by the decoding of 4 random token ids;
- ``randwordadd``: caption [0]; with probability p, 2 random decoded tokens are inserted, one after
  the other, each at a uniformly random word position;
- ``wordrepeat``: caption [0]; with probability p, 2 words drawn from the caption's words are
  inserted, each at a uniformly random word position;
- ``gaussnoise``: λ·N(0, 1) added to the text-encoder hidden states on every step
  (:func:`add_embedding_noise`); the caption is chosen as without mitigation.

With a caption mitigation (the first four) upstream ignores the duplication style when it picks the
caption; so does :func:`train_caption`. Without one, the caption follows the conditioning and the
duplication style: caption [0], except that under ``dup_image`` an image whose sampling weight is
above 1 draws a uniformly random caption of its own on every draw (upstream tests the weight, not
membership of the duplicated set: with ``dup_weight: 1`` no image gets random captions).

Inference time (upstream sd_mitigation.py / diff_inference.py ``prompt_augmentation``, applied
``repeats`` times, upstream default 4 in sd_mitigation.py):

- ``rand_numb_add``: insert ``str(randint(100000))`` at a random word position;
- ``rand_word_add``: insert a random decoded token;
- ``rand_word_repeat``: insert a word drawn from the *original* prompt's words;
- ``gaussnoise``: λ·N(0, 1) added to the prompt embedding, both classifier-free-guidance halves.

A "word position" is an index into ``sentence.split(" ")`` from 0 to its length inclusive
(upstream ``insert_rand_word``). Random token ids are drawn uniformly from ``[0, min(vocab_limit,
len(tokenizer)))`` without the tokenizer's start and end tokens, and decoded as upstream decodes
them (``tokenizer.decode(ids)``, special tokens kept). Upstream draws from ``[0, 49400)``: for SD's
CLIP tokenizer (49408 ids, start and end 49406 and 49407) that is the same set, drawn identically,
whether it pads with its end token (SD 1.x) or with "!" (id 0, SD 2.x: "!" is then a special id
but an ordinary word, drawn and decoded as upstream does). A smaller tokenizer has its start and
end tokens below the cap; they mark sequence boundaries and carry no word, so they are left out.
All randomness comes from a ``numpy.random.Generator`` the caller seeds (upstream used the global
numpy and ``random`` state).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffrep.config import DUPLICATIONS, INFERENCE_MITIGATIONS, TRAIN_MITIGATIONS

CAPTION_MITIGATIONS = (
    "allcaps",
    "randrepl",
    "randwordadd",
    "wordrepeat",
)  # the train-time ones that edit the caption
# Inference-time mitigations that leave the prompt text as it is (they act on embeddings or sampling).
EMBEDDING_MITIGATIONS = (
    "none",
    "gaussnoise",
    "prompt_optimization",
    "guidance_transition",
    "attention_rescale",
)
VOCAB_LIMIT = 49400
RANDREPL_TOKENS = 4
ADDED_WORDS = 2
RAND_NUMBER_LIMIT = 100000


def insert_word(sentence: str, word: str, rng: np.random.Generator) -> str:
    """Insert `word` at a uniformly random position of ``sentence.split(" ")`` (0..len inclusive)."""
    words = sentence.split(" ")
    words.insert(int(rng.integers(0, len(words) + 1)), word)
    return " ".join(words)


def token_limit(tokenizer, vocab_limit: int = VOCAB_LIMIT) -> int:
    """Random token ids are drawn below this: upstream's 49400, capped at the tokenizer's size."""
    return min(int(vocab_limit), len(tokenizer))


def boundary_ids(tokenizer, limit: int) -> list[int]:
    """The tokenizer's start and end token ids below `limit`, ascending: the ids random draws skip.

    They mark where a token sequence starts and ends and are no word (decoding with
    ``skip_special_tokens`` drops them; kept, a caption would hold the marker text
    "<|startoftext|>"). Upstream's cap leaves them out of SD's tokenizers; a small tokenizer has
    them below the cap. The other special ids stay drawable: SD 2.x's tokenizer pads with "!"
    (id 0), an ordinary word that upstream draws and decodes.
    """
    ids = (getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id"))
    return sorted({int(i) for i in ids if i is not None and 0 <= int(i) < limit})


def random_token_ids(
    tokenizer, n: int, rng: np.random.Generator, vocab_limit: int = VOCAB_LIMIT
) -> list[int]:
    """`n` token ids drawn uniformly, with replacement, from ``[0, token_limit)`` minus the start and
    end tokens (:func:`boundary_ids`).

    One ``rng.integers(0, k, size=n)`` call, k the number of allowed ids, mapped to the k-th allowed
    id; with the start and end tokens above the limit (SD's tokenizers) that is upstream's
    ``randint(49400, size=n)``.
    """
    limit = token_limit(tokenizer, vocab_limit)
    skipped = boundary_ids(tokenizer, limit)
    if limit - len(skipped) < 1:
        raise ValueError(
            f"no token id below {limit} but the start and end tokens {skipped}: cannot draw random tokens"
        )
    ids = rng.integers(0, limit - len(skipped), size=n)
    for skipped_id in skipped:  # ascending: shift past each skipped id at or below the running value
        ids = ids + (ids >= skipped_id)
    return [int(i) for i in ids]


def random_tokens(tokenizer, n: int, rng: np.random.Generator, vocab_limit: int = VOCAB_LIMIT) -> str:
    """The decoding of `n` random token ids, as upstream decodes them:
    ``tokenizer.decode(randint(49400, size=n))``, special tokens kept (SD 2.x's "!" stays a word)."""
    return tokenizer.decode(random_token_ids(tokenizer, n, rng, vocab_limit))


def train_caption(
    captions: Sequence[str],
    *,
    duplication: str,
    weight: float,
    mitigation: str,
    p: float,
    tokenizer,
    rng: np.random.Generator,
    vocab_limit: int = VOCAB_LIMIT,
) -> str:
    """The caption of one training draw of an image.

    `captions` is the image's list from the conditioning's caption file (caption [0] first; one
    caption for nolevel / classlevel). `weight`: the image's sampling weight in the run's plan.
    """
    if not captions:
        raise ValueError("train_caption: the image has no captions")
    if mitigation not in TRAIN_MITIGATIONS:
        raise ValueError(
            f"unknown train-time mitigation {mitigation!r}; allowed: {', '.join(TRAIN_MITIGATIONS)}"
        )
    if mitigation == "allcaps":
        return str(captions[int(rng.integers(0, len(captions)))])
    if mitigation in CAPTION_MITIGATIONS:
        caption = str(captions[0])
        if rng.uniform() <= p:
            if mitigation == "randrepl":
                caption = random_tokens(tokenizer, RANDREPL_TOKENS, rng, vocab_limit)
            elif mitigation == "randwordadd":
                for _ in range(ADDED_WORDS):
                    caption = insert_word(caption, random_tokens(tokenizer, 1, rng, vocab_limit), rng)
            else:  # wordrepeat: words of the original caption
                words = caption.split(" ")
                for _ in range(ADDED_WORDS):
                    caption = insert_word(caption, words[int(rng.integers(0, len(words)))], rng)
        return caption
    if duplication == "dup_image" and weight > 1:  # upstream: samplingweights[index] > 1
        return str(captions[int(rng.integers(0, len(captions)))])
    if duplication not in DUPLICATIONS:
        raise ValueError(f"unknown duplication {duplication!r}; allowed: {', '.join(DUPLICATIONS)}")
    return str(captions[0])


def augment_prompt(
    prompt: str,
    style: str,
    repeats: int,
    rng: np.random.Generator,
    tokenizer=None,
    vocab_limit: int = VOCAB_LIMIT,
) -> str:
    """An inference-time prompt mitigation applied `repeats` times; the others return it unchanged."""
    if style in EMBEDDING_MITIGATIONS:
        return prompt
    if style == "rand_numb_add":
        for _ in range(repeats):
            prompt = insert_word(prompt, str(int(rng.integers(0, RAND_NUMBER_LIMIT))), rng)
    elif style == "rand_word_add":
        if tokenizer is None:
            raise ValueError("rand_word_add needs the model's tokenizer")
        for _ in range(repeats):
            prompt = insert_word(prompt, random_tokens(tokenizer, 1, rng, vocab_limit), rng)
    elif style == "rand_word_repeat":
        words = prompt.split(" ")
        for _ in range(repeats):
            prompt = insert_word(prompt, words[int(rng.integers(0, len(words)))], rng)
    else:
        raise ValueError(
            f"unknown inference-time mitigation {style!r}; allowed: {', '.join(INFERENCE_MITIGATIONS)}"
        )
    return prompt


def add_embedding_noise(hidden, lam: float, generator=None):
    """``hidden + lam * N(0, 1)`` (same shape, dtype and device); the gaussnoise mitigation.

    `hidden`: text-encoder hidden states, batch x tokens x dim. `generator`: a torch.Generator,
    or a list of one per batch row (each row's noise then depends only on its own generator).
    """
    import torch

    if lam == 0:
        return hidden
    if isinstance(generator, (list, tuple)):
        if len(generator) != hidden.shape[0]:
            raise ValueError(
                f"add_embedding_noise: {len(generator)} generators for a batch of {hidden.shape[0]}"
            )
        noise = torch.stack(
            [torch.randn(hidden.shape[1:], generator=g, dtype=torch.float32) for g in generator]
        )
    else:
        noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32)
    return hidden + lam * noise.to(device=hidden.device, dtype=hidden.dtype)

"""Train- and inference-time mitigations against upstream's definitions (datasets.py, sd_mitigation.py).

Statistical checks use fixed seeds and n draws; a tolerance of 5 binomial standard deviations
keeps them deterministic and meaningful.
"""

from collections import Counter

import numpy as np
import pytest
import torch

from diffrep.mitigations import (
    add_embedding_noise,
    augment_prompt,
    insert_word,
    random_tokens,
    train_caption,
)

CAPS = ["a red circle on grey", "circle variant one", "shape variant two"]
N = 4000


class FakeTokenizer:
    """decode(ids) -> 'tok{id}' words; len() = vocabulary size."""

    def __init__(self, size=1000):
        self.size = size
        self.seen = []

    def __len__(self):
        return self.size

    def decode(self, ids, skip_special_tokens=False):
        self.seen.extend(ids)
        return " ".join(f"tok{i}" for i in ids)


def close(freq, p, n=N):
    return abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def draws(n=N, seed=0, **kw):
    rng = np.random.default_rng(seed)
    kw.setdefault("tokenizer", FakeTokenizer())
    kw.setdefault("p", 0.1)
    kw.setdefault("duplicated", False)
    kw.setdefault("duplication", "nodup")
    return [train_caption(CAPS, rng=rng, **kw) for _ in range(n)]


def added_words(original: str, new: str) -> Counter:
    """The multiset of words `new` has beyond `original` (asserting `original`'s words stay in order)."""
    o, w = original.split(" "), new.split(" ")
    it = iter(w)
    assert all(any(x == y for y in it) for x in o), f"{original!r} is not a subsequence of {new!r}"
    return Counter(w) - Counter(o)


def test_insert_word_position_uniform_over_len_plus_one():
    rng = np.random.default_rng(0)
    pos = Counter(insert_word("a b c", "X", rng).split(" ").index("X") for _ in range(N))
    assert sorted(pos) == [0, 1, 2, 3]  # before the first word ... after the last
    assert all(close(pos[k] / N, 0.25) for k in range(4))


def test_no_mitigation_uses_caption0_except_duplicated_under_dup_image():
    for dup in ("nodup", "dup_both"):
        assert set(draws(mitigation="none", duplication=dup, duplicated=True)) == {CAPS[0]}
    assert set(draws(mitigation="none", duplication="dup_image", duplicated=False)) == {CAPS[0]}
    c = Counter(draws(mitigation="none", duplication="dup_image", duplicated=True))
    assert set(c) == set(CAPS) and all(close(c[x] / N, 1 / 3) for x in CAPS)
    # gaussnoise acts on the embedding, not the caption
    assert set(draws(mitigation="gaussnoise", duplication="dup_both", duplicated=True)) == {CAPS[0]}


def test_allcaps_uniform_over_all_captions():
    c = Counter(draws(mitigation="allcaps"))
    assert set(c) == set(CAPS) and all(close(c[x] / N, 1 / 3) for x in CAPS)


def test_randrepl_replaces_with_four_random_tokens_with_probability_p():
    tok = FakeTokenizer(size=50)
    out = draws(mitigation="randrepl", p=0.1, tokenizer=tok)
    replaced = [x for x in out if x != CAPS[0]]
    assert close(len(replaced) / N, 0.1)
    assert all(len(x.split(" ")) == 4 and all(w.startswith("tok") for w in x.split(" ")) for x in replaced)
    assert max(tok.seen) < 50  # ids drawn below min(49400, len(tokenizer))
    # upstream ignores the duplication style under a caption mitigation: caption [0] otherwise
    out = draws(mitigation="randrepl", p=0.0, duplication="dup_image", duplicated=True)
    assert set(out) == {CAPS[0]}


def test_randwordadd_inserts_two_random_tokens_with_probability_p():
    out = draws(mitigation="randwordadd", p=0.3)
    changed = [x for x in out if x != CAPS[0]]
    assert close(len(changed) / N, 0.3)
    for x in changed:
        extra = added_words(CAPS[0], x)
        assert sum(extra.values()) == 2 and all(w.startswith("tok") for w in extra)


def test_wordrepeat_inserts_two_words_of_the_caption_with_probability_p():
    out = draws(mitigation="wordrepeat", p=0.1)
    changed = [x for x in out if x != CAPS[0]]
    # a repeated word inserted next to itself still changes the caption, so every draw below p does
    assert close(len(changed) / N, 0.1)
    words = set(CAPS[0].split(" "))
    for x in changed:
        extra = added_words(CAPS[0], x)
        assert sum(extra.values()) == 2 and set(extra) <= words


def test_probability_bounds_and_seeding():
    assert set(draws(mitigation="wordrepeat", p=0.0)) == {CAPS[0]}
    assert CAPS[0] not in draws(mitigation="randrepl", p=1.0, n=200)
    assert draws(mitigation="randwordadd", p=0.5, seed=3) == draws(mitigation="randwordadd", p=0.5, seed=3)
    assert draws(mitigation="randwordadd", p=0.5, seed=3) != draws(mitigation="randwordadd", p=0.5, seed=4)
    with pytest.raises(ValueError, match="unknown train-time mitigation 'bogus'"):
        draws(mitigation="bogus", n=1)


def test_random_tokens_decodes_ids_below_the_cap():
    tok = FakeTokenizer(size=100000)
    rng = np.random.default_rng(0)
    for _ in range(500):
        random_tokens(tok, 4, rng)
    assert len(tok.seen) == 2000 and max(tok.seen) < 49400 and max(tok.seen) > 45000


@pytest.mark.parametrize("repeats", [1, 4])
def test_rand_numb_add_inserts_repeats_numbers_below_100000(repeats):
    rng = np.random.default_rng(0)
    prompt = "a red circle"
    for _ in range(300):
        out = augment_prompt(prompt, "rand_numb_add", repeats, rng)
        extra = added_words(prompt, out)
        assert sum(extra.values()) == repeats
        assert all(w.isdigit() and 0 <= int(w) < 100000 for w in extra)


def test_rand_word_add_and_repeat():
    rng = np.random.default_rng(0)
    prompt = "a red circle on grey"
    for _ in range(300):
        extra = added_words(prompt, augment_prompt(prompt, "rand_word_add", 4, rng, FakeTokenizer()))
        assert sum(extra.values()) == 4 and all(w.startswith("tok") for w in extra)
        extra = added_words(prompt, augment_prompt(prompt, "rand_word_repeat", 4, rng))
        assert sum(extra.values()) == 4 and set(extra) <= set(prompt.split(" "))
    # repeated words come from the original prompt, uniformly
    picks = Counter()
    for _ in range(2000):
        picks.update(added_words(prompt, augment_prompt(prompt, "rand_word_repeat", 1, rng)))
    assert all(close(picks[w] / 2000, 0.2, 2000) for w in prompt.split(" "))
    assert augment_prompt(prompt, "none", 4, rng) == prompt
    assert augment_prompt(prompt, "gaussnoise", 4, rng) == prompt
    with pytest.raises(ValueError, match="unknown inference-time mitigation 'x'"):
        augment_prompt(prompt, "x", 4, rng)


def test_embedding_noise_std_lambda_and_per_row_generators():
    hidden = torch.randn(4, 77, 64)
    out = add_embedding_noise(hidden, 0.1, torch.Generator().manual_seed(0))
    delta = out - hidden
    assert abs(delta.std().item() - 0.1) < 0.003 and abs(delta.mean().item()) < 0.002
    assert torch.equal(add_embedding_noise(hidden, 0.0), hidden)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)]  # noqa: E731
    batch = add_embedding_noise(hidden, 0.5, gens())
    row2 = add_embedding_noise(hidden[2:3], 0.5, [torch.Generator().manual_seed(7)])
    assert torch.equal(batch[2:3], row2)  # a row's noise depends on its own generator only
    with pytest.raises(ValueError, match="3 generators for a batch of 4"):
        add_embedding_noise(hidden, 0.5, gens()[:3])

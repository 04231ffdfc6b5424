"""Train- and inference-time mitigations against upstream's definitions (datasets.py, sd_mitigation.py).

Statistical checks use fixed seeds and n draws; a tolerance of 5 binomial standard deviations
keeps them deterministic and meaningful.
"""

from collections import Counter

import numpy as np
import pytest
import torch

from diffrep.captions import random_captions
from diffrep.duplication import make_plan
from diffrep.mitigations import (
    VOCAB_LIMIT,
    add_embedding_noise,
    augment_prompt,
    boundary_ids,
    insert_word,
    random_token_ids,
    random_tokens,
    train_caption,
)

CAPS = ["a red circle on grey", "circle variant one", "shape variant two"]
N = 4000


class FakeTokenizer:
    """decode(ids) -> 'tok{id}' words; len() = vocabulary size; `bos`, `eos`: its start and end
    token ids; `special`: its other special ids (all_special_ids holds all of them)."""

    def __init__(self, size=1000, special=(), bos=None, eos=None):
        self.size = size
        self.bos_token_id, self.eos_token_id = bos, eos
        self.all_special_ids = [i for i in (bos, eos) if i is not None] + list(special)
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
    kw.setdefault("weight", 1.0)
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
        assert set(draws(mitigation="none", duplication=dup, weight=5.0)) == {CAPS[0]}
    assert set(draws(mitigation="none", duplication="dup_image", weight=1.0)) == {CAPS[0]}
    c = Counter(draws(mitigation="none", duplication="dup_image", weight=5.0))
    assert set(c) == set(CAPS) and all(close(c[x] / N, 1 / 3) for x in CAPS)
    # gaussnoise acts on the embedding, not the caption
    assert set(draws(mitigation="gaussnoise", duplication="dup_both", weight=5.0)) == {CAPS[0]}


def upstream_caption_choices(prompts, duplication, samplingweight):
    """Transcription of upstream datasets.py ``__getitem__`` without --trainspecial (instance captions):
    the captions it can return; ``np.random.choice(prompts, 1)`` picks uniformly among them.

        if self.duplication in ['nodup','dup_both']: instance_prompt = self.prompts[path_img][0]
        elif self.duplication == 'dup_image':
            if self.samplingweights[index] > 1: instance_prompt = np.random.choice(self.prompts[path_img], 1)[0]
            else: instance_prompt = self.prompts[path_img][0]
    """
    if duplication in ("nodup", "dup_both"):
        return {prompts[0]}
    if duplication == "dup_image":
        return set(prompts) if samplingweight > 1 else {prompts[0]}
    raise AssertionError(duplication)


@pytest.mark.parametrize("dup_weight", [1, 2, 5])
@pytest.mark.parametrize("style", ["dup_both", "dup_image"])
def test_dup_image_random_captions_follow_upstreams_weight_test(style, dup_weight):
    """A plan's weights decide the caption as upstream's samplingweights do: with dup_weight 1 the
    duplicated set is marked but sampled like the rest, and no image gets random captions."""
    plan = make_plan([f"img{i}" for i in range(100)], style, weight_pc=0.1, dup_weight=dup_weight, seed=0)
    assert plan["duplicated"].sum() == 10
    rng = np.random.default_rng(0)
    for weight in plan["weight"]:
        expected = upstream_caption_choices(CAPS, style, weight)
        got = Counter(
            train_caption(
                CAPS, duplication=style, weight=weight, mitigation="none", p=0.1, tokenizer=None, rng=rng
            )
            for _ in range(60)
        )
        assert set(got) == expected


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
    out = draws(mitigation="randrepl", p=0.0, duplication="dup_image", weight=5.0)
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


def clip_tokenizer_like_sds(pad_token: str):
    """A CLIP tokenizer laid out like Stable Diffusion's, built offline: 49408 ids, the 256 byte
    symbols (id 0 is "!"), the same with "</w>", word tokens ``w{id}`` in place of CLIP's merges, then
    <|startoftext|> 49406 and <|endoftext|> 49407. `pad_token`: "<|endoftext|>" as SD 1.x's, "!"
    as SD 2.x's (OpenCLIP's convention)."""
    from transformers import CLIPTokenizer

    from diffrep.tinysd import _bytes_to_unicode

    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [f"w{i}</w>" for i in range(len(tokens), 49406)] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token=pad_token)


SD_PAD_TOKENS = {"sd1": "<|endoftext|>", "sd2": "!"}


@pytest.fixture(scope="module", params=sorted(SD_PAD_TOKENS))
def sd_tokenizer(request, tmp_path_factory):
    """(setup, tokenizer): SD 1.x's or SD 2.x's tokenizer layout, saved and loaded the way the
    captions rule loads a base model's (diffrep.captions.load_tokenizer)."""
    from diffrep.captions import load_tokenizer

    root = tmp_path_factory.mktemp(request.param)
    clip_tokenizer_like_sds(SD_PAD_TOKENS[request.param]).save_pretrained(root / "tokenizer")
    return request.param, load_tokenizer(root)


class Upstream:
    """Upstream's random-token draws, transcribed: datasets.py (``randrepl``, ``randwordadd``,
    ``insert_rand_word``), sd_mitigation.py / diff_inference.py (``prompt_augmentation``,
    ``rand_word_add``) and the ``instancelevel_random`` caption lists (4 ids of
    ``np.random.randint(49400)``, decoded by ``tokenizer.decode`` at training time).

    One numpy Generator stands in for numpy's global state and for Python's ``random``
    (``insert_rand_word``'s ``random.randint(0, len)``, both ends included)."""

    def __init__(self, tokenizer, seed: int):
        self.tokenizer, self.rng = tokenizer, np.random.default_rng(seed)

    def randint(self, size: int) -> list:
        return list(self.rng.integers(49400, size=size))  # list(np.random.randint(49400, size=size))

    def insert_rand_word(self, sentence: str, word: str) -> str:
        sent_list = sentence.split(" ")
        sent_list.insert(self.rng.integers(0, len(sent_list) + 1), word)
        return " ".join(sent_list)

    def randrepl(self, caption: str, p: float) -> str:
        instance_prompt = caption
        if self.rng.uniform() <= p:
            instance_prompt = self.tokenizer.decode(self.randint(4))
        return instance_prompt

    def randwordadd(self, caption: str, p: float) -> str:
        instance_prompt = caption
        if self.rng.uniform() <= p:
            for _ in range(2):
                randword = self.tokenizer.decode(self.randint(1))
                instance_prompt = self.insert_rand_word(instance_prompt, randword)
        return instance_prompt

    def rand_word_add(self, prompt: str, repeat_num: int) -> str:
        for _ in range(repeat_num):
            prompt = self.insert_rand_word(prompt, self.tokenizer.decode(self.randint(1)))
        return prompt

    def random_caption(self) -> str:
        return self.tokenizer.decode(self.randint(4))


def test_sd_tokenizers_special_ids(sd_tokenizer):
    """SD 1.x pads with its end token; SD 2.x with "!" (id 0), which makes id 0 special."""
    setup, tok = sd_tokenizer
    assert len(tok) == 49408 and (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert sorted(tok.all_special_ids) == {"sd1": [49406, 49407], "sd2": [0, 49406, 49407]}[setup]
    assert boundary_ids(tok, VOCAB_LIMIT) == []  # both above upstream's cap: nothing left out


def test_random_tokens_equal_upstreams_draw_for_draw(sd_tokenizer):
    """Ids and decoded text of every draw equal upstream's, for SD 1.x's and SD 2.x's tokenizer."""
    _, tok = sd_tokenizer
    ours, theirs = np.random.default_rng(5), Upstream(tok, 5)
    for n in (1, 2, 4) * 200:
        assert random_token_ids(tok, n, ours) == [int(i) for i in theirs.randint(n)]
    ours, theirs = np.random.default_rng(6), Upstream(tok, 6)
    for n in (1, 2, 4) * 200:
        assert random_tokens(tok, n, ours) == tok.decode(theirs.randint(n))


def test_mitigations_and_random_captions_equal_upstreams_draw_for_draw(sd_tokenizer):
    """randrepl, randwordadd (train time), rand_word_add (inference) and instancelevel_random
    captions: the same text as the transcription of upstream, draw for draw, on both tokenizers."""
    _, tok = sd_tokenizer
    caption = "a red circle on grey"
    for mitigation in ("randrepl", "randwordadd"):
        ours, theirs = np.random.default_rng(7), Upstream(tok, 7)
        for _ in range(300):
            got = train_caption(
                [caption],
                duplication="nodup",
                weight=1.0,
                mitigation=mitigation,
                p=0.5,
                tokenizer=tok,
                rng=ours,
            )
            assert got == getattr(theirs, mitigation)(caption, 0.5)
    ours, theirs = np.random.default_rng(8), Upstream(tok, 8)
    for _ in range(300):
        assert augment_prompt(caption, "rand_word_add", 4, ours, tok) == theirs.rand_word_add(caption, 4)
    theirs = Upstream(tok, 9)
    expected = {i: [theirs.random_caption() for _ in range(10)] for i in ("a", "b", "c")}
    assert random_captions(["a", "b", "c"], tok, per_image=10, n_tokens=4, seed=9) == expected


def test_sd2s_pad_token_is_drawn_as_a_word(sd_tokenizer):
    """Seed 11026 draws ids [5561, 0, 19079, 43563] (upstream's randint): id 0 is "!" under both
    tokenizers, special under SD 2.x's, and a word of the caption under both, as upstream decodes it."""
    _, tok = sd_tokenizer
    assert Upstream(tok, 11026).randint(4) == [5561, 0, 19079, 43563]
    assert random_token_ids(tok, 4, np.random.default_rng(11026)) == [5561, 0, 19079, 43563]
    assert random_captions(["a"], tok, per_image=1, n_tokens=4, seed=11026) == {"a": ["w5561 !w19079 w43563"]}


@pytest.mark.parametrize(
    "size, bos, eos, special",
    [
        (515, 513, 514, ()),
        (50, 0, 1, ()),
        (50, 3, 17, (49,)),
        (60000, 49406, 7, (0,)),
        (50, None, None, (0, 1)),
    ],
)
def test_random_token_ids_never_draw_the_start_or_end_token(size, bos, eos, special):
    """Any tokenizer size: the ids drawn are [0, min(49400, size)) without the start and end tokens,
    uniformly; other special ids (SD 2.x's "!" pad) are drawn like any word."""
    tok = FakeTokenizer(size=size, special=special, bos=bos, eos=eos)
    rng = np.random.default_rng(0)
    ids = Counter(i for _ in range(2000) for i in random_token_ids(tok, 4, rng))
    allowed = set(range(min(VOCAB_LIMIT, size))) - {bos, eos}
    assert set(ids) <= allowed
    if len(allowed) < 100:  # small vocabularies: every allowed id is drawn, about equally often
        assert set(ids) == allowed and all(close(ids[i] / 8000, 1 / len(allowed), 8000) for i in allowed)


def test_a_tokenizer_of_only_start_and_end_tokens_is_refused():
    with pytest.raises(ValueError, match=r"no token id below 2 but the start and end tokens \[0, 1\]"):
        random_token_ids(FakeTokenizer(size=2, bos=0, eos=1), 1, np.random.default_rng(0))


def test_random_tokens_of_a_small_clip_tokenizer_have_no_boundary_marker():
    """The mini's tokenizer has its start and end tokens inside the cap (they are its only special
    ids: it pads with the end token); they are never drawn, so no caption holds their marker text."""
    from diffrep.tinysd import make_tokenizer

    tok = make_tokenizer(["a red circle on a blue background", "picture one two three"], max_length=16)
    assert sorted(tok.all_special_ids) == [len(tok) - 2, len(tok) - 1] == [tok.bos_token_id, tok.eos_token_id]
    rng = np.random.default_rng(0)
    for _ in range(1500):
        ids = random_token_ids(tok, 2, rng)
        assert not set(ids) & {tok.bos_token_id, tok.eos_token_id}
        assert "<|" not in random_tokens(tok, 2, rng)


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

"""Memorised prompts planted in the mini base model (the mini_sd builder's ``planted`` option)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffrep import memorization, plantedmem


def test_planted_set_is_seeded_and_its_controls_are_distinct():
    a = plantedmem.planted_set(0, 3, 4, 32)
    b = plantedmem.planted_set(0, 3, 4, 32)
    assert a.images.shape == (3, 32, 32, 3) and np.array_equal(a.images, b.images)
    assert a.captions == b.captions and len(set(a.captions + a.unseen)) == 7
    assert all(len(c.split(" ")) == 2 for c in a.captions + a.unseen)
    assert a.captions != plantedmem.planted_set(1, 3, 4, 32).captions


def test_micro_build_with_planted_prompts_writes_a_valid_prompt_file(tmp_path):
    from diffrep.tinysd import build_mini_sd

    out = build_mini_sd(tmp_path / "planted_sd", seed=0, micro=True, planted=3, planted_controls=2, threads=1)
    table = memorization.read_prompt_table(out / plantedmem.PROMPTS_FILE)
    assert list(table["label"]) == ["VM"] * 3 + ["none"] * 4
    raw = pd.read_csv(out / plantedmem.PROMPTS_FILE)
    assert list(raw["kind"]) == ["planted"] * 3 + ["unseen_nonsense"] * 2 + ["base_caption"] * 2
    for images in table["images"][:3]:
        assert (out / "memorization" / images[0]).is_file()
    info = json.loads((out / "build_info.json").read_text())
    assert info["options"]["planted"] == 3 and "planted" in info["trained"]


def test_planted_options_are_absent_from_an_unplanted_build():
    from diffrep.tinysd import mini_options

    assert "planted" not in mini_options(True, {})
    assert mini_options(False, {"planted": 2})["planted_fraction"] == 0.25
    with pytest.raises(ValueError, match="unknown option"):
        mini_options(False, {"plantd": 2})

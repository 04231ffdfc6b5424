"""Memorised-prompt detection (Wen et al., ICLR 2024): the metric, its ROC statistics, prompt files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from diffrep import memorization as mem
from diffrep.tinysd import build_tiny_pipeline

CAPTIONS = ["a red circle on a blue background", "a small green square", "vokarim tesul"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread, seeded


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def tiny_pipe(request, tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    folder = build_tiny_pipeline(
        tmp_path_factory.mktemp("tiny") / "m", CAPTIONS * 3, seed=0, prediction_type=request.param
    )
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ ROC, by hand


def test_auc_counts_pairs_and_half_ties():
    # pairs (pos > neg): 3 beats 3, 2 beats 0.5 and 1.5 and ties 2, 1 beats 0.5: (3 + 2 + 0.5 + 1) / 9
    assert mem.roc_auc([3, 2, 1], [0.5, 1.5, 2]) == pytest.approx(6.5 / 9)
    assert mem.roc_auc([5, 6], [1, 2]) == 1.0 and mem.roc_auc([1], [2]) == 0.0


def test_tpr_at_one_percent_fpr_is_strictly_below_the_fpr():
    # 200 negatives, one of them at 0.95: calling >= 0.9 memorised costs FPR 0.005 < 0.01 -> TPR 1
    neg = [0.0] * 199 + [0.95]
    assert mem.tpr_at_fpr([0.9, 1.0], neg) == 1.0
    # 100 negatives: the same point has FPR 0.01, not below 0.01 -> only 1.0 (> 0.95) is caught
    assert mem.tpr_at_fpr([0.9, 1.0], [0.0] * 99 + [0.95]) == 0.5
    assert mem.tpr_at_fpr([0.9, 0.8, 0.3], [0.1, 0.2, 0.85]) == pytest.approx(1 / 3)
    fpr, tpr, thr = mem.roc_curve([0.9, 0.8, 0.3], [0.1, 0.2, 0.85])
    assert thr[0] == np.inf and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_subset_statistics_average_five_seeded_subsets():
    pos = [2.0, 3.0]
    neg = [0.0, 1.0, 2.5, 4.0, 0.5, 0.2]
    stats = mem.subset_statistics(pos, neg, n_subsets=5, seed=3)
    assert stats["subset_size"] == 2 and stats["n_subsets"] == 5 and stats["n_nonmemorized"] == 6
    expected = []
    for k in range(5):
        rng = np.random.default_rng(mem.derive_seed(3, "subset", k))
        sub = np.asarray(neg)[np.sort(rng.choice(6, size=2, replace=False))]
        expected.append(mem.roc_auc(pos, sub))
    assert stats["auc_per_subset"] == expected
    assert stats["auc"] == pytest.approx(np.mean(expected))
    assert mem.subset_statistics(pos, neg, seed=3) == stats  # seeded
    # fewer negatives than positives: every subset is all of them
    assert mem.subset_statistics([1, 2, 3], [0.0, 5.0])["auc_std"] == 0.0


def test_roc_needs_both_sets():
    with pytest.raises(mem.MemorizationError, match="no non-memorised prompts"):
        mem.roc_auc([1.0], [])


def test_set_statistics_rows_per_label():
    det = pd.DataFrame(
        {
            "label": ["VM", "VM", "TM", "none", "none", "none"],
            "metric": [9.0, 8.0, 1.5, 1.0, 2.0, 0.5],
        }
    )
    det["memorized"] = det["label"] != "none"
    table = mem.set_statistics(det, n_subsets=5, seed=0).set_index("positives")
    assert list(table.index) == ["memorized", "VM", "TM"]
    assert table.loc["VM", "auc"] == 1.0
    assert table.loc["TM", "n_memorized"] == 1


# ------------------------------------------------------------------ the metric


def test_to_epsilon_recovers_the_noise_from_v_and_x0():
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    a = torch.tensor(0.3)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(mem.to_epsilon(v, xt, a, "v_prediction"), noise, atol=1e-5)
    assert torch.allclose(mem.to_epsilon(x0, xt, a, "sample"), noise, atol=1e-5)
    assert mem.to_epsilon(noise, xt, a, "epsilon") is noise


def test_text_noise_norm_is_per_sample_over_all_elements():
    diff = torch.zeros(2, 4, 8, 8)
    diff[0] = 1.0  # 256 elements of 1: norm 16
    diff[1, 0, 0, 0] = 3.0
    assert mem.text_noise_norm(torch.zeros_like(diff), diff).tolist() == [16.0, 3.0]


def _by_hand(pipe, prompt: str, seed: int) -> float:
    """Transcription of the authors' first-step value: one UNet call on [∅, c] at the first DDIM step."""
    mem.use_ddim(pipe)
    sched = pipe.scheduler
    sched.set_timesteps(4)
    t = sched.timesteps[0]
    latents = (
        torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    )
    tok = pipe.tokenizer(
        ["", prompt], padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    )
    with torch.no_grad():
        emb = pipe.text_encoder(tok.input_ids)[0]
        out = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=emb).sample
    a = sched.alphas_cumprod[int(t)]
    eps = out if sched.config.prediction_type == "epsilon" else a.sqrt() * out + (1 - a).sqrt() * latents
    return float((eps[1] - eps[0]).norm(p=2))


def test_noise_norms_match_a_hand_transcription_of_the_first_step(tiny_pipe):
    norms = mem.noise_norms(
        tiny_pipe,
        ["a red circle", "vokarim tesul"],
        [11, 12],
        steps=4,
        first_steps=2,
        guidance_scale=3.0,
        resolution=32,
    )
    assert norms.shape == (2, 2) and np.all(norms > 0)
    assert norms[0, 0] == pytest.approx(_by_hand(tiny_pipe, "a red circle", 11), rel=1e-4)
    assert norms[1, 0] == pytest.approx(_by_hand(tiny_pipe, "vokarim tesul", 12), rel=1e-4)
    # the empty prompt has no text-conditional part
    assert (
        mem.noise_norms(tiny_pipe, [""], [1], steps=4, first_steps=1, guidance_scale=3.0, resolution=32)[0, 0]
        == 0.0
    )


def test_detect_averages_steps_then_generations(tiny_pipe):
    table = pd.DataFrame({"prompt": ["a red circle", "a small green square"], "label": ["VM", "none"]})
    settings = dict(steps=4, first_steps=2, n_generations=3, guidance_scale=3.0, resolution=32, seed=5)
    det = mem.detect(tiny_pipe, table, settings, batch_size=4)
    assert list(det["memorized"]) == [True, False]
    seeds = mem.detection_seeds(5, 1, 3)
    norms = mem.noise_norms(
        tiny_pipe,
        ["a small green square"] * 3,
        seeds,
        steps=4,
        first_steps=2,
        guidance_scale=3.0,
        resolution=32,
    )
    assert det["per_generation"][1] == pytest.approx(list(norms.mean(axis=1)), rel=1e-5)
    assert det["metric"][1] == pytest.approx(norms.mean(), rel=1e-5)


def test_detection_refuses_unsupported_families_and_no_guidance(tiny_pipe):
    with pytest.raises(mem.MemorizationError, match="model 'sd35_medium' is of family 'sd3'"):
        mem.check_family("sd3", "sd35_medium")
    mem.check_family("sdxl", "sdxl")
    with pytest.raises(mem.MemorizationError, match="guidance_scale 1.0"):
        mem.noise_norms(tiny_pipe, ["a"], [0], steps=2, first_steps=1, guidance_scale=1.0, resolution=32)


# ------------------------------------------------------------------ prompt files


def test_prompt_files_read_and_validate(tmp_path):
    good = tmp_path / "webster.csv"
    good.write_text('prompt,label,images\n"a, b",VM,http://x/1.jpg;http://x/2.jpg\nc,none,\n')
    table = mem.read_prompt_table(good)
    assert list(table["label"]) == ["VM", "none"] and table["images"][0] == [
        "http://x/1.jpg",
        "http://x/2.jpg",
    ]
    assert table["images"][1] == [] and list(table["row"]) == [1, 2]
    jsonl = tmp_path / "membench.jsonl"
    jsonl.write_text('{"prompt": "p", "label": "MV"}\n')
    assert list(mem.read_prompt_table(jsonl, label_map={"MV": "VM"})["label"]) == ["VM"]

    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("prompt,caption\np,q\n")
    with pytest.raises(mem.MemorizationError, match=r"nolabel.csv: missing column\(s\) label"):
        mem.read_prompt_table(no_label)
    bad = tmp_path / "bad.tsv"
    bad.write_text("prompt\tlabel\np\tTM\nq\tmemorized\n")
    with pytest.raises(
        mem.MemorizationError, match=r"bad.tsv: row 2 \('q'\): label 'memorized' is not one of VM, TM, none"
    ):
        mem.read_prompt_table(bad)
    with pytest.raises(mem.MemorizationError, match="prompt file not found"):
        mem.read_prompt_table(tmp_path / "absent.csv")

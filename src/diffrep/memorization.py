"""Memorised-prompt detection (Wen et al., ICLR 2024) and its ROC statistics.

**The metric, exactly.** For a prompt ``c`` and one generation (seed), the sampler runs classifier-
free guidance from the seeded initial latent ``x_T`` with a DDIM scheduler (as the authors' code).
At sampling step ``i`` (timestep ``t_i``) the denoiser predicts the noise with the prompt,
``ε(x_t, c)``, and with the empty (negative) prompt, ``ε(x_t, ∅)``; the step's value is the L2
norm of their difference **over all latent elements of that one sample** (channels × height ×
width flattened: ``torch.linalg.vector_norm(ε_c − ε_∅)`` per sample, not the mean of per-pixel
norms and not the norm over the batch), as the authors' ``noise_pred_text[j].norm(p=2)``. The
prompt's metric is the mean of that value over the first ``T`` sampling steps, then the mean over
``n`` generations (seeds ``derive_seed(seed, "detection", prompt index, generation)``).

For a v-prediction model (SD 2.x 768, the mini) the UNet's output is converted to the noise
prediction first: ``ε = √ᾱ_t · v + √(1 − ᾱ_t) · x_t``, so the difference is ``√ᾱ_t (v_c − v_∅)``;
an ε-prediction model (SD 1.4, SDXL) is used as is. Supported: the UNet families ``sd`` and
``sdxl`` (both batch ``[∅, c]`` in one UNet call, which a forward hook reads); ``sd3`` (flow
matching, a transformer) raises :class:`MemorizationError` naming the model.

**The statistics.** Memorised prompts (labels ``VM`` verbatim, ``TM`` template, NeMo's terms) are
the positives, non-memorised ones (label ``none``) the negatives; a higher metric means
"memorised". ROC AUC is the Mann-Whitney probability that a positive scores above a negative (ties
count one half). TPR at 1 % FPR follows the authors' evaluation: on the ROC curve (a prompt is
called memorised when its metric is ≥ the threshold), the largest TPR among the points whose FPR
is strictly below 0.01. Both are averaged over 5 seeded subsets of the negatives, each the size
of the positive set (or all negatives when there are fewer), as the authors did.

**Prompt files** (csv, tsv, jsonl or parquet): columns ``prompt`` and ``label`` (``VM``, ``TM`` or
``none``), optional ``images`` (the prompt's ground-truth training image(s): paths relative to the
file or URLs, ``;``-separated). :func:`read_prompt_table` names the file and row of a bad entry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep.config import derive_seed

log = logging.getLogger(__name__)

LABELS = ("VM", "TM", "none")
MEMORIZED_LABELS = ("VM", "TM")
REQUIRED_COLUMNS = ("prompt", "label")
SUPPORTED_FAMILIES = ("sd", "sdxl")
MAX_FPR = 0.01


class MemorizationError(ValueError):
    """A prompt file, model or setting the memorization benchmark cannot use; says which and why."""


# --------------------------------------------------------------------------------------------
# Prompt files
# --------------------------------------------------------------------------------------------


def _read_any(path: Path, sep: str | None = None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, sep=sep or ",", dtype=str, keep_default_na=False)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise MemorizationError(
        f"{path}: unknown prompt file type {suffix!r}; allowed: .csv, .tsv, .jsonl, .parquet"
    )


def read_prompt_table(
    path,
    label_map: dict | None = None,
    columns: dict | None = None,
    sep: str | None = None,
    default_label: str | None = None,
) -> pd.DataFrame:
    """The prompt file at `path` as columns prompt, label, images (a list of str per row), file, row.

    `columns` maps our column names to the file's (``{"prompt": "caption"}``); `sep` is a csv's
    delimiter (NeMo's files use ``;``); `default_label` labels every row of a file without a label
    column (a list of controls, or of memorised prompts without VM / TM distinction). `label_map` renames labels first (e.g. ``{"MV": "VM", "N": "none"}`` for a source's own terms).
    Raises :class:`MemorizationError` naming the file (and row, 1-based after the header) for a
    missing file or column, an empty prompt or a label outside VM / TM / none.
    """
    path = Path(path)
    if not path.is_file():
        raise MemorizationError(f"{path}: prompt file not found")
    df = _read_any(path, sep)
    if columns:
        df = df.rename(columns={theirs: ours for ours, theirs in columns.items() if theirs in df.columns})
    if default_label is not None and "label" not in df.columns:
        df["label"] = default_label
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MemorizationError(
            f"{path}: missing column(s) {', '.join(missing)}; a prompt file needs {', '.join(REQUIRED_COLUMNS)} "
            f"(and optionally images); it has {', '.join(map(str, df.columns)) or 'no columns'}"
        )
    labels = [str(v) for v in df["label"]]
    if label_map:
        labels = [str(label_map.get(v, v)) for v in labels]
    for i, (prompt, label) in enumerate(zip(df["prompt"], labels)):
        if label not in LABELS:
            raise MemorizationError(
                f"{path}: row {i + 1} ({str(prompt)[:40]!r}): label {label!r} is not one of {', '.join(LABELS)}"
            )
        if not str(prompt).strip():
            raise MemorizationError(f"{path}: row {i + 1}: empty prompt")
    images = df["images"] if "images" in df.columns else [""] * len(df)
    return pd.DataFrame(
        {
            "prompt": [str(p) for p in df["prompt"]],
            "label": labels,
            "images": [_image_list(v) for v in images],
            "file": path.name,
            "row": np.arange(1, len(df) + 1),
        }
    )


def _image_list(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    return [s.strip() for s in str(value or "").split(";") if s.strip()]


# --------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------


def check_family(family: str, model: str) -> None:
    """Raise :class:`MemorizationError` naming `model` when its family has no detection metric here."""
    if family not in SUPPORTED_FAMILIES:
        raise MemorizationError(
            f"model {model!r} is of family {family!r}: the detection metric ‖ε(x_t,c) − ε(x_t,∅)‖ is "
            f"implemented for the UNet families {', '.join(SUPPORTED_FAMILIES)} (sd3 is flow matching "
            "with a transformer denoiser: not supported)"
        )


def to_epsilon(output, sample, alpha_bar, prediction_type: str):
    """The noise prediction from a denoiser's `output` at the noisy `sample` (x_t), ᾱ_t = `alpha_bar`.

    ``epsilon``: unchanged; ``v_prediction``: ``√ᾱ v + √(1−ᾱ) x_t``; ``sample`` (x_0):
    ``(x_t − √ᾱ x_0) / √(1−ᾱ)``. Shapes follow `output`.
    """
    if prediction_type == "epsilon":
        return output
    a = alpha_bar.to(output.dtype) if hasattr(alpha_bar, "to") else alpha_bar
    if prediction_type == "v_prediction":
        return a**0.5 * output + (1 - a) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - a**0.5 * output) / (1 - a) ** 0.5
    raise MemorizationError(f"prediction_type {prediction_type!r}; allowed: epsilon, v_prediction, sample")


def text_noise_norm(eps_uncond, eps_text):
    """Per-sample L2 norm of ``eps_text − eps_uncond`` over all latent elements: shape (batch,)."""
    import torch

    diff = (eps_text - eps_uncond).float()
    return torch.linalg.vector_norm(diff.reshape(diff.shape[0], -1), ord=2, dim=1)


class NoiseNormRecorder:
    """A forward hook on a pipeline's UNet that records the text-conditional noise norm per call.

    The UNet families batch ``[unconditional, conditional]`` (negative first) in one call; the hook
    splits the output, converts both halves to ε with the scheduler's ᾱ_t and appends the per-sample
    norms to :attr:`norms` (one tensor per sampling step).
    """

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.norms: list = []

    def __call__(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        out = output[0] if isinstance(output, tuple) else output.sample
        if out.shape[0] % 2:
            raise MemorizationError("detection needs classifier-free guidance (guidance_scale > 1)")
        alpha_bar = self.scheduler.alphas_cumprod[int(t)]
        pred = self.scheduler.config.prediction_type
        x_u, x_c = sample.chunk(2)
        out_u, out_c = out.chunk(2)
        eps_u = to_epsilon(out_u.float(), x_u.float(), alpha_bar, pred)
        eps_c = to_epsilon(out_c.float(), x_c.float(), alpha_bar, pred)
        self.norms.append(text_noise_norm(eps_u, eps_c).detach().cpu())
        return None


@contextlib.contextmanager
def recording(pipe):
    """Record the text-conditional noise norms of every UNet call inside the block."""
    recorder = NoiseNormRecorder(pipe.scheduler)
    handle = pipe.unet.register_forward_hook(recorder, with_kwargs=True)
    try:
        yield recorder
    finally:
        handle.remove()


def _stop_after(n_steps: int):
    """A ``callback_on_step_end`` that interrupts the sampler after `n_steps` steps."""

    def callback(pipe, i, t, kwargs):
        if i + 1 >= n_steps:
            pipe._interrupt = True
        return kwargs

    return callback


def use_ddim(pipe) -> None:
    """Sample with DDIM built from the pipeline's own scheduler config (the authors' sampler)."""
    from diffusers import DDIMScheduler

    if not isinstance(pipe.scheduler, DDIMScheduler):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


def noise_norms(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int,
    first_steps: int,
    guidance_scale: float,
    resolution: int,
    negative_prompt: str = "",
) -> np.ndarray:
    """Text-conditional noise norms, float64 array (len(prompts), first_steps): one row per generation.

    Generation ``j`` samples prompt ``prompts[j]`` from a latent drawn by a torch generator seeded
    ``seeds[j]`` (``steps`` DDIM steps, guidance ``guidance_scale``) and stops after ``first_steps``.
    """
    import torch

    if not 1 <= first_steps <= steps:
        raise MemorizationError(f"first_steps {first_steps} must be between 1 and steps ({steps})")
    if guidance_scale <= 1:
        raise MemorizationError(
            f"guidance_scale {guidance_scale}: detection needs classifier-free guidance (> 1)"
        )
    use_ddim(pipe)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    with torch.no_grad(), recording(pipe) as rec:
        pipe(
            list(prompts),
            negative_prompt=[negative_prompt] * len(prompts) if negative_prompt else None,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance_scale),
            height=resolution,
            width=resolution,
            generator=gens,
            output_type="latent",
            callback_on_step_end=_stop_after(first_steps),
        )
    if len(rec.norms) < first_steps:
        raise MemorizationError(
            f"the sampler made {len(rec.norms)} UNet calls, fewer than first_steps {first_steps}"
        )
    return torch.stack(rec.norms[:first_steps], dim=1).double().numpy()


def detection_seeds(seed: int, prompt_index: int, n: int) -> list[int]:
    """The seeds of a prompt's `n` detection generations."""
    return [derive_seed(seed, "detection", prompt_index, g) for g in range(n)]


def detect(pipe, table: pd.DataFrame, settings: dict, batch_size: int = 16, progress=None) -> pd.DataFrame:
    """The detection metric of every prompt of `table` (:func:`read_prompt_table`'s columns).

    `settings`: steps, first_steps (T), n_generations (n), guidance_scale, resolution, seed,
    negative_prompt (optional). Returns `table` with metric (mean over T steps and n generations),
    metric_std (over generations), per_generation (list of n values) and memorized (VM or TM).
    """
    n = int(settings["n_generations"])
    jobs = [(i, g) for i in range(len(table)) for g in range(n)]
    seeds = {i: detection_seeds(int(settings["seed"]), i, n) for i in range(len(table))}
    values = np.zeros((len(table), n))
    prompts = list(table["prompt"])
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        norms = noise_norms(
            pipe,
            [prompts[i] for i, _ in chunk],
            [seeds[i][g] for i, g in chunk],
            steps=int(settings["steps"]),
            first_steps=int(settings["first_steps"]),
            guidance_scale=float(settings["guidance_scale"]),
            resolution=int(settings["resolution"]),
            negative_prompt=str(settings.get("negative_prompt") or ""),
        )
        for (i, g), row in zip(chunk, norms):
            values[i, g] = row.mean()
        if progress:
            progress.update(min(start + batch_size, len(jobs)))
    out = table.copy()
    out["metric"] = values.mean(axis=1)
    out["metric_std"] = values.std(axis=1)
    out["per_generation"] = [list(map(float, v)) for v in values]
    out["memorized"] = out["label"].isin(MEMORIZED_LABELS)
    return out


def threshold_mask(out_text, out_uncond, sample, alpha_bar, prediction_type: str, threshold: float):
    """Wen et al.'s train-time mitigation: 1.0 for the batch samples whose text-conditional noise norm
    ‖ε(x_t, c) − ε(x_t, ∅)‖₂ (per sample, all latent elements) is at most `threshold`, else 0.0.

    The dropped samples contribute zero to the batch loss, whose mean keeps the batch size as its
    denominator (the step's scale does not grow when samples are dropped).
    """
    eps_c = to_epsilon(out_text.float(), sample.float(), alpha_bar, prediction_type)
    eps_u = to_epsilon(out_uncond.float(), sample.float(), alpha_bar, prediction_type)
    return (text_noise_norm(eps_u, eps_c) <= threshold).float()


# --------------------------------------------------------------------------------------------
# ROC statistics
# --------------------------------------------------------------------------------------------


def _scores(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise MemorizationError(
            f"no {what} prompts: ROC statistics need both memorised and non-memorised prompts"
        )
    if not np.all(np.isfinite(arr)):
        raise MemorizationError(f"{what} scores contain NaN or infinite values")
    return arr


def roc_auc(positives, negatives) -> float:
    """P(positive > negative) + ½ P(tie): the area under the ROC curve (higher score = positive)."""
    pos, neg = _scores(positives, "memorised"), _scores(negatives, "non-memorised")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def roc_curve(positives, negatives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending from +inf: "memorised" means score ≥ threshold."""
    pos, neg = _scores(positives, "memorised"), _scores(negatives, "non-memorised")
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def tpr_at_fpr(positives, negatives, max_fpr: float = MAX_FPR) -> float:
    """The largest TPR among ROC points whose FPR is strictly below `max_fpr` (the authors' ``fpr < .01``)."""
    fpr, tpr, _ = roc_curve(positives, negatives)
    return float(tpr[fpr < max_fpr].max())


def subset_statistics(
    positives, negatives, n_subsets: int = 5, subset_size: int | None = None, seed: int = 0
) -> dict:
    """AUC and TPR at 1 % FPR averaged over `n_subsets` seeded subsets of the negatives.

    Subset ``k`` draws ``subset_size`` negatives without replacement (default: as many as there are
    positives, at most all negatives) with ``numpy.random.default_rng(derive_seed(seed, "subset", k))``.
    Returns auc, auc_std, tpr_at_1fpr, tpr_at_1fpr_std, the per-subset lists, n_memorized,
    n_nonmemorized (all of them) and subset_size.
    """
    pos, neg = _scores(positives, "memorised"), _scores(negatives, "non-memorised")
    size = min(int(subset_size or pos.size), neg.size)
    aucs, tprs = [], []
    for k in range(int(n_subsets)):
        rng = np.random.default_rng(derive_seed(seed, "subset", k))
        sub = neg[np.sort(rng.choice(neg.size, size=size, replace=False))]
        aucs.append(roc_auc(pos, sub))
        tprs.append(tpr_at_fpr(pos, sub))
    return {
        "auc": float(np.mean(aucs)),
        "auc_std": float(np.std(aucs)),
        "tpr_at_1fpr": float(np.mean(tprs)),
        "tpr_at_1fpr_std": float(np.std(tprs)),
        "auc_per_subset": aucs,
        "tpr_per_subset": tprs,
        "n_memorized": int(pos.size),
        "n_nonmemorized": int(neg.size),
        "subset_size": size,
        "n_subsets": int(n_subsets),
    }


def set_statistics(detections: pd.DataFrame, n_subsets: int = 5, seed: int = 0) -> pd.DataFrame:
    """One row per positive set (all memorised, VM, TM) against all non-memorised prompts."""
    neg = detections.loc[~detections["memorized"], "metric"]
    rows = []
    for name, labels in (("memorized", MEMORIZED_LABELS), ("VM", ("VM",)), ("TM", ("TM",))):
        pos = detections.loc[detections["label"].isin(labels), "metric"]
        if pos.empty or neg.empty:
            continue
        stats = subset_statistics(pos, neg, n_subsets=n_subsets, seed=seed)
        rows.append(
            {
                "positives": name,
                **{k: v for k, v in stats.items() if not k.endswith("per_subset")},
                "metric_mean_memorized": float(pos.mean()),
                "metric_mean_nonmemorized": float(neg.mean()),
            }
        )
    return pd.DataFrame(rows)

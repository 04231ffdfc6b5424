"""Calibrating a copy descriptor: can it tell a copy of a training picture from a distinct one?

A replication threshold means something only if the descriptor separates copies from look-alikes
on the study's own pictures (docs/design.md: on homogeneous data a fixed 0.5 flags everything). The
calibration makes *augmented copies* of training pictures — the kinds of change a generated copy
shows (:data:`AUGMENTATIONS`) — embeds them with the study's embedder and scores each copy twice
against the training set:

- positive: its similarity to its own source picture;
- negative: its best similarity to any *other* training picture (the distinct picture a
  retrieval would confuse it with, top-1 with the source excluded).

From these it reports the ROC (AUC, true-positive rate at a false-positive rate of at most
``max_fpr``) per augmentation and over all of them, and chooses the replication threshold: the
lowest threshold ``t`` at which the fraction of negatives *strictly above* ``t`` is at most
``max_fpr`` (strictly above, as ``frac_above`` counts in :mod:`diffrep.similarity`).

Deterministic: augmentation parameters come from ``SeedSequence([seed, picture index, kind])``.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

AUGMENTATIONS = ("crop", "flip", "blur", "jpeg", "color")
TABLE_COLUMNS = (
    "augmentation",
    "n_positive",
    "n_negative",
    "auc",
    "max_fpr",
    "tpr_at_fpr",
    "fpr",
    "threshold",
)


class CalibrationError(ValueError):
    """Calibration inputs that cannot be used; the message names the value."""


# ---------------------------------------------------------------- augmentations


def augment(image, kind: str, rng: np.random.Generator):
    """An augmented copy of a PIL RGB `image` (same size) by one of :data:`AUGMENTATIONS`.

    crop: a random crop of 75-90 % of the side, resized back; flip: horizontal mirror; blur:
    Gaussian, radius 0.5-1 px per 32 px of side; jpeg: JPEG quality 40-80, decoded; color: per
    channel gain 1 ± 0.08 and shift ± 8 levels.
    """
    from PIL import Image, ImageFilter

    w, h = image.size
    if kind == "crop":
        frac = rng.uniform(0.75, 0.9)
        cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0) * w / 32))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(40, 81)))
        buf.seek(0)
        with Image.open(buf) as im:
            return im.convert("RGB")
    if kind == "color":
        x = np.asarray(image, dtype=np.float64)
        x = x * rng.uniform(0.92, 1.08, size=3) + rng.uniform(-8, 8, size=3)
        return Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8), mode="RGB")
    raise CalibrationError(f"unknown augmentation {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")


def write_augmented(
    paths: Sequence[Path], kinds: Sequence[str], seed: int, out_dir: str | os.PathLike
) -> list[dict]:
    """Write an augmented copy of every picture in `paths` for every kind, as PNG, into `out_dir`.

    Returns one row per copy: ``{"source": index into paths, "augmentation": kind, "path": Path}``.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            image = im.convert("RGB")
        for k, kind in enumerate(kinds):
            rng = np.random.default_rng(np.random.SeedSequence([seed, i, k]))
            out = out_dir / f"{i:06d}_{kind}.png"
            augment(image, kind, rng).save(out, format="PNG")
            rows.append({"source": i, "augmentation": kind, "path": out})
    return rows


# ---------------------------------------------------------------- scores and ROC


def pair_scores(
    queries: np.ndarray, train: np.ndarray, sources: Sequence[int], chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) scores of L2-normalised `queries` (m × d) against `train` (n × d).

    positive[i] = queries[i] · train[sources[i]]; negative[i] = the largest queries[i] · train[j]
    over j ≠ sources[i]. Needs n >= 2.
    """
    train = np.asarray(train, dtype=np.float32)
    if train.shape[0] < 2:
        raise CalibrationError(f"calibration needs at least 2 training pictures, got {train.shape[0]}")
    sources = np.asarray(sources, dtype=np.int64)
    pos = np.empty(len(sources))
    neg = np.empty(len(sources))
    for start in range(0, len(sources), chunk):
        q = np.asarray(queries[start : start + chunk], dtype=np.float32)
        src = sources[start : start + chunk]
        sims = (q @ train.T).astype(np.float64)
        rows = np.arange(len(src))
        pos[start : start + len(src)] = sims[rows, src]
        sims[rows, src] = -np.inf
        neg[start : start + len(src)] = sims.max(axis=1)
    return pos, neg


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve: P(positive > negative) + ½ P(tie) (the Mann-Whitney U statistic)."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise CalibrationError(f"ROC AUC needs positives and negatives, got {pos.size} and {neg.size}")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    return float((below.sum() + 0.5 * (not_above - below).sum()) / (pos.size * neg.size))


def roc_curve(
    positive: Sequence[float], negative: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as sklearn.metrics.roc_curve without dropping points: at each
    threshold t (+inf, then every distinct score, descending) the fractions of negatives and of
    positives scoring >= t. Starts at (0, 0), ends at (1, 1); its trapezoid area is :func:`roc_auc`."""
    pos = np.sort(np.asarray(positive, dtype=np.float64))
    neg = np.sort(np.asarray(negative, dtype=np.float64))
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size
    tpr = (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size
    return fpr, tpr, thresholds


def threshold_at_fpr(positive: Sequence[float], negative: Sequence[float], max_fpr: float = 0.01) -> dict:
    """The lowest threshold whose false-positive rate (negatives strictly above it) is <= max_fpr.

    That is the (m+1)-th largest negative, m = floor(max_fpr · n_negative). Returns
    ``{"threshold", "fpr", "tpr"}`` (tpr = positives strictly above the threshold).
    """
    if not 0 <= max_fpr < 1:
        raise CalibrationError(f"calibration.max_fpr must be in [0, 1), got {max_fpr}")
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.sort(np.asarray(negative, dtype=np.float64))[::-1]
    if pos.size == 0 or neg.size == 0:
        raise CalibrationError(f"a threshold needs positives and negatives, got {pos.size} and {neg.size}")
    m = int(np.floor(max_fpr * neg.size + 1e-9))
    t = float(neg[min(m, neg.size - 1)])
    return {"threshold": t, "fpr": float((neg > t).mean()), "tpr": float((pos > t).mean())}


def calibration_table(scores, max_fpr: float = 0.01):
    """One row per augmentation and a last row ``all`` (columns :data:`TABLE_COLUMNS`).

    `scores` is a table with columns ``augmentation``, ``positive``, ``negative``.
    """
    import pandas as pd

    parts = [(kind, scores[scores["augmentation"] == kind]) for kind in scores["augmentation"].unique()]
    rows = []
    for name, part in parts + [("all", scores)]:
        chosen = threshold_at_fpr(part["positive"], part["negative"], max_fpr)
        rows.append(
            {
                "augmentation": name,
                "n_positive": len(part),
                "n_negative": len(part),
                "auc": roc_auc(part["positive"], part["negative"]),
                "max_fpr": float(max_fpr),
                "tpr_at_fpr": chosen["tpr"],
                "fpr": chosen["fpr"],
                "threshold": chosen["threshold"],
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# ---------------------------------------------------------------- files


def choose_sample(n: int, n_images: int, seed: int) -> np.ndarray:
    """Indices of the pictures to augment: all when n <= n_images, else a seeded sorted sample."""
    if n <= n_images:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
    return np.sort(rng.choice(n, size=n_images, replace=False))


def calibrate_files(
    images_dir,
    metadata,
    train_npz,
    embedder_cfg: dict,
    scores_out,
    table_out,
    summary_out,
    *,
    augmentations: Sequence[str],
    n_images: int,
    max_fpr: float,
    seed: int,
    model_dir=None,
    batch_size: int = 64,
) -> dict:
    """The calibrate rule: augment, embed, score against the training embeddings, write the three files.

    scores_out (parquet: source id, augmentation, positive, negative), table_out (csv,
    :func:`calibration_table`), summary_out (json: the ``all`` row, the embedder, the settings).
    """
    import tempfile

    import pandas as pd

    from diffrep.embeddings import make_embedder, read_embeddings, train_images
    from diffrep.fileio import atomic_path

    unknown = sorted(set(augmentations) - set(AUGMENTATIONS))
    if unknown or not augmentations:
        raise CalibrationError(
            f"calibration.augmentations {list(augmentations)}: allowed {', '.join(AUGMENTATIONS)}"
        )
    ids, paths = train_images(images_dir, metadata)
    train = read_embeddings(train_npz)
    if train["ids"] != ids:
        raise CalibrationError(f"{train_npz}: its ids are not those of {metadata} (re-run embed_train)")
    chosen = choose_sample(len(ids), n_images, seed)
    embedder = make_embedder(embedder_cfg, model_dir)
    with tempfile.TemporaryDirectory(prefix="calibration.") as tmp:
        rows = write_augmented([paths[i] for i in chosen], augmentations, seed, tmp)
        queries = embedder.embed([r["path"] for r in rows], batch_size=batch_size)
    sources = [int(chosen[r["source"]]) for r in rows]
    pos, neg = pair_scores(queries, train["embeddings"], sources)
    scores = pd.DataFrame(
        {
            "id": [ids[s] for s in sources],
            "augmentation": [r["augmentation"] for r in rows],
            "positive": pos,
            "negative": neg,
        }
    )
    table = calibration_table(scores, max_fpr)
    overall = table[table["augmentation"] == "all"].iloc[0].to_dict()
    summary = {
        **overall,
        "embedder": embedder.name,
        "preprocess": embedder.preprocess,
        "n_images": len(chosen),
        "augmentations": list(augmentations),
        "seed": seed,
    }
    with atomic_path(scores_out, suffix=".parquet") as tmp:
        scores.to_parquet(tmp, index=False)
    with atomic_path(table_out, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(summary_out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    log.info(
        "calibration: AUC %.4f, TPR %.3f at FPR <= %g, threshold %.4f",
        overall["auc"],
        overall["tpr_at_fpr"],
        max_fpr,
        overall["threshold"],
    )
    return summary


# ---------------------------------------------------------------- the study's threshold

CALIBRATED = "calibrated"  # similarity.threshold: take it from the calibration


def study_threshold(summaries: Sequence, datasets: Sequence[str], out) -> dict:
    """The replication threshold of a study for one embedder, from its datasets' calibrations.

    The largest of the calibrated thresholds (each the lowest with at most ``max_fpr`` false
    positives on its dataset), so that every dataset of the study is measured against the same
    threshold and none has more than ``max_fpr`` false positives. Writes ``out`` (JSON: the
    threshold, the dataset it comes from, each dataset's threshold, AUC and TPR) and returns it.
    """
    if len(summaries) != len(datasets) or not summaries:
        raise CalibrationError(f"study threshold: {len(summaries)} summaries for datasets {list(datasets)}")
    per, embedders = {}, set()
    for ds, path in zip(datasets, summaries):
        try:
            summary = json.loads(Path(path).read_text())
            per[ds] = {k: float(summary[k]) for k in ("threshold", "auc", "tpr_at_fpr", "max_fpr")}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CalibrationError(f"{path}: not a calibration summary with a threshold ({err!r})") from None
        embedders.add(summary.get("embedder"))
    if len(embedders) != 1:
        raise CalibrationError(
            f"study threshold: summaries of several embedders {sorted(map(str, embedders))}"
        )
    source = max(per, key=lambda ds: per[ds]["threshold"])
    result = {
        "threshold": per[source]["threshold"],
        "from_dataset": source,
        "embedder": embedders.pop(),
        "datasets": per,
    }
    from diffrep.fileio import atomic_path

    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    log.info(
        "study threshold %.4f (from %s; per dataset %s)",
        result["threshold"],
        source,
        {ds: round(v["threshold"], 4) for ds, v in per.items()},
    )
    return result


def resolve_threshold(value, threshold_json=None) -> float:
    """A configured similarity threshold as a number: itself, or for ``calibrated`` the threshold of
    the study's calibration (:func:`study_threshold`'s file)."""
    if value != CALIBRATED:
        return float(value)
    if not threshold_json:
        raise CalibrationError(
            "similarity.threshold is 'calibrated' but no calibrated threshold file was given"
        )
    try:
        return float(json.loads(Path(threshold_json).read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{threshold_json}: no calibrated threshold ({err!r})") from None


def plot_calibration(scores, table, out, title: str = "", dpi: int = 150) -> None:
    """ROC curves per augmentation (left) and the positive / negative score histograms with the
    chosen threshold (right), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffrep.fileio import atomic_path

    fig, (ax_roc, ax_hist) = plt.subplots(1, 2, figsize=(9, 3.8))
    for kind in list(scores["augmentation"].unique()) + ["all"]:
        part = scores if kind == "all" else scores[scores["augmentation"] == kind]
        fpr, tpr, _ = roc_curve(part["positive"], part["negative"])
        auc = table.loc[table["augmentation"] == kind, "auc"].iloc[0]
        ax_roc.plot(fpr, tpr, lw=2.5 if kind == "all" else 1.2, label=f"{kind} (AUC {auc:.3f})")
    ax_roc.set(
        xscale="symlog",
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="false-positive rate (symlog)",
        ylabel="true-positive rate",
        title="ROC: copy vs distinct picture",
    )
    ax_roc.set_xscale("symlog", linthresh=0.01)
    ax_roc.legend(fontsize=7, loc="lower right")
    bins = np.linspace(min(scores["negative"].min(), scores["positive"].min()), 1.0, 40)
    ax_hist.hist(scores["negative"], bins=bins, alpha=0.6, label="best distinct picture")
    ax_hist.hist(scores["positive"], bins=bins, alpha=0.6, label="own source (augmented copy)")
    t = table.loc[table["augmentation"] == "all", "threshold"].iloc[0]
    max_fpr = table["max_fpr"].iloc[0]
    ax_hist.axvline(t, color="k", ls="--", label=f"threshold {t:.3f} (FPR <= {max_fpr:g})")
    ax_hist.set(xlabel="similarity", ylabel="augmented copies", title="Scores")
    ax_hist.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)

"""The study's figures, drawn with seaborn from the tables (and, for galleries and grids, images).

One function per figure: it takes DataFrames (or image folders) and a ``style`` dict
(``style``, ``context``, ``dpi`` and the figure's own ``palette``, ``height``, ``aspect``,
``title``) and returns a matplotlib Figure. Every figure carries the study name in its title
(``mini study``: mini numbers are never the paper's), labelled axes with units and the config's
setting names (nodup, dup_both, instancelevel_blip, allcaps, …). A study that lacks a setting (no
classlevel, no mitigations, a single run) gets the panels that exist and a note saying what is
missing, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from diffrep.config import SUMMARY_FIGURES  # noqa: E402
from diffrep.duplication import in_dup_set  # noqa: E402
from diffrep.fileio import atomic_path  # noqa: E402
from diffrep.similarity import BASELINE_IDENTITY, MATCHES_IDENTITY, read_identified  # noqa: E402

log = logging.getLogger(__name__)

SIM_LABEL = "top-1 similarity (cosine, embedder {emb})"
DUPLICATION_ORDER = ["nodup", "dup_both", "dup_image"]
CONDITIONING_ORDER = ["nolevel", "classlevel", "instancelevel_blip", "instancelevel_random"]


# ---------------------------------------------------------------- helpers


def study_title(title: str, study: str) -> str:
    """``title — {study} study`` (+ a reminder that the numbers are not the paper's)."""
    notes = {"paper": "", "rehearsal": " (random weights: not the paper's numbers)"}
    note = notes.get(study.split("-")[0], " (toy scale: not the paper's numbers)")
    return f"{title} — {study} study{note}"


@contextlib.contextmanager
def themed(style: Mapping | None):
    """seaborn style and context of the config, for the figure drawn inside."""
    style = style or {}
    with sns.axes_style(style.get("style", "whitegrid")), sns.plotting_context(style.get("context", "paper")):
        yield


def note(ax, text: str) -> None:
    """Write ``text`` into an empty axes: what is missing and why."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        text,
        ha="center",
        va="center",
        wrap=True,
        fontsize=9,
        transform=ax.transAxes,
        bbox={"boxstyle": "round", "fc": "#f5f5f5", "ec": "#999999"},
    )


def numeric(series: pd.Series) -> pd.Series:
    """A column as floats; ``skipped`` and empty cells become NaN."""
    return pd.to_numeric(series, errors="coerce")


def save_figure(fig, png, pdf=None, dpi: int = 150) -> None:
    """Write the figure as PNG (and PDF) atomically, then close it."""
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    if pdf:
        with atomic_path(pdf, suffix=".pdf") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)


def _panels(keys: Sequence, ncols_max: int = 3, height: float = 3.5, aspect: float = 1.3):
    n = max(1, len(keys))
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(height * aspect * ncols, height * nrows + 0.6), squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def _sizes(style: Mapping, height: float, aspect: float) -> tuple[float, float]:
    return float(style.get("height", height)), float(style.get("aspect", aspect))


def _finetuned(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["run"] != "base"]


def _reference_preset(summary: pd.DataFrame) -> str | None:
    """The preset without inference-time mitigation that the main comparison uses (``default`` if any)."""
    plain = summary[summary["inference_mitigation"] == "none"]["preset"].unique().tolist()
    if not plain:
        return None
    return "default" if "default" in plain else sorted(plain)[0]


def _mitigation_label(row) -> str:
    if row["train_mitigation"] not in ("none", "base"):
        return f"train: {row['train_mitigation']}"
    if row["inference_mitigation"] != "none":
        return f"inference: {row['inference_mitigation']}"
    return "no mitigation"


# ---------------------------------------------------------------- summary figures


def sim95_by_dup_cond(summary: pd.DataFrame, baselines: pd.DataFrame, style: Mapping, study: str):
    """95th percentile of top-1 similarity by duplication (bars) × conditioning (x), per dataset and
    embedder, for runs without train-time mitigation at the reference preset; dashed line: the base
    model; dotted line: the train-vs-train baseline."""
    height, aspect = _sizes(style, 3.6, 1.4)
    keys = sorted(summary.groupby(["dataset", "embedder"]).groups) or [("?", "?")]
    with themed(style):
        fig, axes = _panels(keys, height=height, aspect=aspect)
        preset = _reference_preset(summary)
        for ax, (ds, emb) in zip(axes, keys):
            part = summary[
                (summary["dataset"] == ds) & (summary["embedder"] == emb) & (summary["preset"] == preset)
            ]
            runs = _finetuned(part)
            runs = runs[runs["train_mitigation"] == "none"]
            if runs.empty:
                note(
                    ax,
                    f"{ds} / {emb}: no finetuned run without mitigation at preset {preset!r} "
                    "in this study\n(add an experiments block with train_mitigation: [none])",
                )
                continue
            order = [c for c in CONDITIONING_ORDER if c in set(runs["conditioning"])]
            hue_order = [d for d in DUPLICATION_ORDER if d in set(runs["duplication"])]
            sns.barplot(
                data=runs.assign(p95=numeric(runs["p95"])),
                x="conditioning",
                y="p95",
                hue="duplication",
                order=order,
                hue_order=hue_order,
                palette=style.get("palette", "deep"),
                ax=ax,
            )
            for (
                container
            ) in ax.containers:  # inside the bars: above them they collide with the reference lines
                ax.bar_label(container, fmt="%.3f", fontsize=7, label_type="center", color="white")
            base = part[part["run"] == "base"]
            if not base.empty:
                ax.axhline(float(numeric(base["p95"]).iloc[0]), ls="--", c="k", lw=1, label="base model")
            bl = baselines[(baselines["dataset"] == ds) & (baselines["embedder"] == emb)]
            if not bl.empty:
                ax.axhline(float(bl["p95"].iloc[0]), ls=":", c="0.4", lw=1.2, label="train vs train")
            missing = [c for c in CONDITIONING_ORDER if c not in order]
            ax.set_title(
                f"{ds} / {emb} (preset {preset})"
                + (f"\nnot in this study: {', '.join(missing)}" if missing else ""),
                fontsize=9,
            )
            ax.set_xlabel("conditioning")
            ax.set_ylabel("95th percentile of top-1 similarity (cosine)")
            # outside the axes: inside, it hid the bars of the last conditioning
            ax.legend(
                fontsize=7,
                title="duplication",
                title_fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
            )
        fig.suptitle(study_title(style.get("title", "Replication by duplication × conditioning"), study))
        fig.tight_layout()
    return fig


def mitigation_tradeoff(summary: pd.DataFrame, style: Mapping, study: str):
    """95th-percentile similarity (y) against FID (x, left) and CLIP score (x, right) for every
    train-time and inference-time mitigation on instancelevel_blip runs, with the no-mitigation
    point of the same duplication setting; CLIP score panels say so when the metric was skipped."""
    height, aspect = _sizes(style, 3.6, 1.3)
    rows = summary[(summary["conditioning"] == "instancelevel_blip")].copy()
    mitigated = rows[(rows["train_mitigation"] != "none") | (rows["inference_mitigation"] != "none")]
    rows = rows[rows["duplication"].isin(set(mitigated["duplication"]))] if not mitigated.empty else rows
    rows["mitigation"] = [_mitigation_label(r) for _, r in rows.iterrows()]
    rows["p95"] = numeric(rows["p95"])
    rows["fid_value"] = numeric(rows["fid"]) if "fid" in rows else np.nan
    rows["clip_value"] = numeric(rows["clipscore"]) if "clipscore" in rows else np.nan
    keys = sorted(rows.groupby(["dataset", "embedder"]).groups) or [("?", "?")]
    with themed(style):
        fig, axes = plt.subplots(
            len(keys), 2, figsize=(2 * height * aspect, height * len(keys) + 0.8), squeeze=False
        )
        for (ax_fid, ax_clip), (ds, emb) in zip(axes, keys):
            part = rows[(rows["dataset"] == ds) & (rows["embedder"] == emb)]
            if mitigated.empty:
                note(
                    ax_fid,
                    "no train-time or inference-time mitigation in this study\n"
                    "(train_mitigation or a preset's mitigation)",
                )
                note(ax_clip, "nothing to compare: no mitigation")
                continue
            for ax, col, xlabel, metric in (
                (ax_fid, "fid_value", "FID (lower = closer to the training images)", "FID"),
                (
                    ax_clip,
                    "clip_value",
                    "CLIP score (100 · cosine, higher = closer to the prompt)",
                    "CLIP score",
                ),
            ):
                ok = part[part[col].notna()]
                if ok.empty:
                    raw = part[col.replace("_value", "") if col != "clip_value" else "clipscore"]
                    why = (
                        "skipped in the config (enabled: false)"
                        if (raw == "skipped").any()
                        else "not available"
                    )
                    note(ax, f"{ds} / {emb}: {metric} {why}")
                    continue
                sns.scatterplot(
                    data=ok,
                    x=col,
                    y="p95",
                    hue="mitigation",
                    style="duplication",
                    s=70,
                    palette=style.get("palette", "deep"),
                    ax=ax,
                )
                for _, r in ok.iterrows():
                    ax.annotate(
                        r["mitigation"].split(": ")[-1],
                        (r[col], r["p95"]),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
                ax.set_xlabel(xlabel)
                ax.set_ylabel("95th percentile of top-1 similarity (cosine)")
                ax.set_title(f"{ds} / {emb}", fontsize=9)
                ax.legend(fontsize=6, loc="best")
        fig.suptitle(study_title(style.get("title", "Mitigations: replication vs image quality"), study))
        fig.tight_layout()
    return fig


def _size_series(summary: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Rows of the settings (run × preset × embedder) measured on at least two datasets of different
    training-set size, with ``n_train`` (from the baselines table) and numeric statistics."""
    rows = summary
    if "n_train" not in rows or numeric(rows["n_train"]).isna().all():  # older tables: from the baselines
        sizes = baselines[["dataset", "embedder", "n_train"]].drop_duplicates(["dataset", "embedder"])
        rows = rows.drop(columns=["n_train"], errors="ignore").merge(sizes, on=["dataset", "embedder"])
    rows = rows.assign(
        n_train=numeric(rows["n_train"]), frac_above=numeric(rows["frac_above"]), p95=numeric(rows["p95"])
    )
    rows = rows[rows["n_train"].notna()]
    n_sizes = rows.groupby(["run", "preset", "embedder"])["n_train"].transform("nunique")
    rows = rows[n_sizes >= 2]
    return rows.assign(setting=rows["run"] + " · " + rows["preset"]).sort_values("n_train")


def replication_by_dataset_size(summary: pd.DataFrame, baselines: pd.DataFrame, style: Mapping, study: str):
    """CVPR'23's dataset-size experiment: for every setting (run × preset) trained on datasets of
    several sizes, the fraction of generations above the replication threshold (left) and the 95th
    percentile of top-1 similarity (right) against the number of training images (log scale), per
    embedder; dotted: each dataset's train-vs-train baseline p95."""
    height, aspect = _sizes(style, 3.4, 1.3)
    rows = _size_series(summary, baselines)
    embedders = sorted(rows["embedder"].unique()) or ["?"]
    with themed(style):
        fig, axes = plt.subplots(
            len(embedders), 2, figsize=(2 * height * aspect, height * len(embedders) + 0.8), squeeze=False
        )
        for (ax_frac, ax_p95), emb in zip(axes, embedders):
            part = rows[rows["embedder"] == emb]
            if part.empty:
                note(ax_frac, "no setting trained on datasets of several sizes in this study")
                note(ax_p95, "(an experiments block with the same settings on nested datasets)")
                continue
            threshold = numeric(part["threshold"]).dropna()
            for ax, col, ylabel in (
                (ax_frac, "frac_above", "fraction of generations above the threshold"),
                (ax_p95, "p95", "95th percentile of top-1 similarity (cosine)"),
            ):
                sns.lineplot(
                    data=part,
                    x="n_train",
                    y=col,
                    hue="setting",
                    marker="o",
                    palette=style.get("palette", "deep"),
                    ax=ax,
                )
                for _, r in part.iterrows():
                    ax.annotate(
                        f"{r[col]:.3f}",
                        (r["n_train"], r[col]),
                        fontsize=7,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
                ax.set_xscale("log")
                ax.set_xlabel("training images (log scale)")
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=6, loc="best")
            bl = baselines[baselines["embedder"] == emb].assign(n_train=lambda d: numeric(d["n_train"]))
            bl = bl[bl["dataset"].isin(set(part["dataset"]))].sort_values("n_train")
            ax_p95.plot(
                bl["n_train"], numeric(bl["p95"]), ls=":", c="0.4", marker=".", label="train vs train"
            )
            ax_p95.legend(fontsize=6, loc="best")
            thr = f", threshold {threshold.iloc[0]:g}" if not threshold.empty else ""
            ax_frac.set_title(f"{emb}: replication{thr}", fontsize=9)
            ax_p95.set_title(f"{emb}: similarity", fontsize=9)
        fig.suptitle(study_title(style.get("title", "Replication by training-set size"), study))
        fig.tight_layout()
    return fig


def similarity_distributions(
    matches: Mapping[tuple, pd.DataFrame],
    baseline_matches: Mapping[tuple, pd.DataFrame],
    style: Mapping,
    study: str,
):
    """Top-1 similarity of every generation per run · preset (boxes, points), with the train-vs-train
    distribution (each training image's best other training image) as the first, grey box.

    ``matches``: ``{(dataset, embedder, run, preset): matches table}`` (docs/formats.md);
    ``baseline_matches``: ``{(dataset, embedder): train_baseline.parquet table}``.
    """
    height, aspect = _sizes(style, 4.0, 2.0)
    keys = sorted({(k[0], k[1]) for k in matches}) or [("?", "?")]
    with themed(style):
        fig, axes = _panels(keys, ncols_max=2, height=height, aspect=aspect)
        for ax, (ds, emb) in zip(axes, keys):
            frames = []
            bl = baseline_matches.get((ds, emb))
            if bl is not None and len(bl):
                frames.append(
                    pd.DataFrame({"set": "train vs train", "similarity": bl["similarity"].astype(float)})
                )
            for (d, e, run, gen), m in sorted(matches.items()):
                if (d, e) == (ds, emb):
                    top1 = m[m["rank"] == 0]
                    frames.append(
                        pd.DataFrame(
                            {"set": f"{run} · {gen}", "similarity": top1["similarity"].astype(float)}
                        )
                    )
            if not frames:
                note(ax, f"{ds} / {emb}: no similarity tables")
                continue
            data = pd.concat(frames, ignore_index=True)
            order = list(dict.fromkeys(data["set"]))
            palette = {
                s: ("0.75" if s == "train vs train" else sns.color_palette(style.get("palette", "deep"))[0])
                for s in order
            }
            sns.boxplot(
                data=data,
                y="set",
                x="similarity",
                order=order,
                hue="set",
                palette=palette,
                legend=False,
                fliersize=0,
                ax=ax,
            )
            sns.stripplot(
                data=data, y="set", x="similarity", order=order, color="k", size=2, alpha=0.5, ax=ax
            )
            if bl is None or not len(bl):
                ax.text(0.01, 0.01, "train-vs-train baseline missing", transform=ax.transAxes, fontsize=7)
            ax.set_xlabel(SIM_LABEL.format(emb=emb))
            ax.set_ylabel("run · preset")
            ax.set_title(f"{ds} / {emb}", fontsize=9)
        fig.suptitle(study_title(style.get("title", "Distributions of top-1 similarity"), study))
        fig.tight_layout()
    return fig


def replication_counts(matches: pd.DataFrame, plan: pd.DataFrame | None) -> pd.DataFrame:
    """Per training image of the plan: ``train_id``, ``count`` (times it is the top-1 match),
    ``duplicated`` (bool: in the study's duplicated set, the plan's ``dup_set``, which nodup plans
    mark too; plans without it use ``duplicated``). Images never matched count 0."""
    top1 = matches[matches["rank"] == 0]
    counts = top1.groupby("train_id").size().rename("count")
    if plan is None:
        ids = pd.Index(sorted(set(counts.index)), name="train_id")
        dup = set(top1.loc[in_dup_set(top1), "source_id"].dropna())
        out = pd.DataFrame({"train_id": ids})
        out["duplicated"] = out["train_id"].isin(dup)
    else:
        out = pd.DataFrame({"train_id": plan["id"], "duplicated": in_dup_set(plan)})
    out["count"] = out["train_id"].map(counts).fillna(0).astype(int)
    return out


DUP_HUE_ORDER = ["duplicated", "not duplicated"]


def _duplicated_vs_not_data(
    matches: Mapping[tuple, pd.DataFrame], plans: Mapping[tuple, pd.DataFrame]
) -> tuple[list, list, list]:
    """The three panels' rows of :func:`duplicated_vs_not`, one ``set`` (run · preset) per matches table:
    top-1 similarities by prompt source, source-match rates by prompt source, and mean replication
    counts of duplicated / non-duplicated training images."""
    sims, rates, counts = [], [], []
    for (ds, emb, run, gen), m in sorted(matches.items()):
        label = f"{run} · {gen}" + ("" if len({k[:2] for k in matches}) == 1 else f" ({ds}/{emb})")
        top1 = m[m["rank"] == 0]
        split = np.where(in_dup_set(top1), "duplicated", "not duplicated")
        sims.append(
            pd.DataFrame(
                {"set": label, "prompt source": split, "similarity": top1["similarity"].astype(float)}
            )
        )
        for name, part in top1.groupby(split):
            rates.append(
                {"set": label, "prompt source": name, "rate": float(part["is_source"].astype(bool).mean())}
            )
        rc = replication_counts(m, plans.get((ds, run)))
        for dup, part in rc.groupby("duplicated"):
            counts.append(
                {
                    "set": label,
                    "training image": "duplicated" if dup else "not duplicated",
                    "mean_count": float(part["count"].mean()),
                }
            )
    return sims, rates, counts


def _panel_similarity_by_source(ax, sim: pd.DataFrame, emb_names: Sequence[str], palette) -> None:
    """Panel (a) of :func:`duplicated_vs_not`: top-1 similarity boxes by prompt source."""
    if not (sim["prompt source"] == "duplicated").any():
        ax.text(
            0.01,
            0.01,
            "no generation has a duplicated prompt\n(no dup_* run in this study)",
            transform=ax.transAxes,
            fontsize=7,
        )
    sns.boxplot(
        data=sim,
        y="set",
        x="similarity",
        hue="prompt source",
        hue_order=DUP_HUE_ORDER,
        palette=palette,
        fliersize=2,
        ax=ax,
    )
    ax.set_xlabel(f"top-1 similarity\n(cosine, embedder {', '.join(emb_names)})")
    ax.set_ylabel("run · preset")
    ax.set_title("(a) similarity by prompt source", fontsize=9)


def _dup_bars(ax, data: pd.DataFrame, x: str, hue: str, palette, xlabel: str, title: str) -> None:
    """Horizontal bars of ``x`` per ``set``, duplicated / not duplicated side by side (panels b and c)."""
    sns.barplot(data=data, y="set", x=x, hue=hue, hue_order=DUP_HUE_ORDER, palette=palette, ax=ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("")
    ax.set_title(title, fontsize=9)


def _panel_source_match_rate(ax, rates: pd.DataFrame, palette) -> None:
    """Panel (b) of :func:`duplicated_vs_not`: how often the top-1 match is the prompt's source image."""
    xlabel = "fraction of generations whose top-1\nmatch is the prompt's source image"
    _dup_bars(ax, rates, "rate", "prompt source", palette, xlabel, "(b) source-match rate")
    ax.set_xlim(0, 1)


def _panel_replication_counts(ax, counts: pd.DataFrame, palette) -> None:
    """Panel (c) of :func:`duplicated_vs_not`: mean top-1 count per duplicated / non-duplicated image."""
    xlabel = "generations matching a training image\n(mean top-1 count per image)"
    _dup_bars(ax, counts, "mean_count", "training image", palette, xlabel, "(c) replication counts")


def duplicated_vs_not(
    summary: pd.DataFrame,
    matches: Mapping[tuple, pd.DataFrame],
    plans: Mapping[tuple, pd.DataFrame],
    style: Mapping,
    study: str,
):
    """Duplicated vs non-duplicated images, per run · preset of the first dataset × embedder pairs:
    (a) top-1 similarity of generations whose prompt came from a duplicated / non-duplicated image;
    (b) the rate at which the top-1 match is the prompt's own source image; (c) replication counts,
    the mean number of generations whose top-1 match is a given training image, for duplicated and
    non-duplicated training images (from the run's duplication plan). "Duplicated" is the study's
    duplicated set, the same images in every run: in nodup runs and the base model they are not
    duplicated, which makes those rows the control.

    ``plans``: ``{(dataset, run): the run's duplication plan table}`` (:func:`read_plans`).
    """
    height, aspect = _sizes(style, 3.8, 1.2)
    sims, rates, counts = _duplicated_vs_not_data(matches, plans)
    with themed(style):
        fig, axes = plt.subplots(1, 3, figsize=(3 * height * aspect, height + 0.3 * len(matches) + 0.8))
        pal = style.get("palette", "deep")
        if not sims:
            for ax in axes:
                note(ax, "no similarity tables in this study")
        else:
            emb_names = sorted({k[1] for k in matches})
            _panel_similarity_by_source(axes[0], pd.concat(sims, ignore_index=True), emb_names, pal)
            _panel_source_match_rate(axes[1], pd.DataFrame(rates), pal)
            _panel_replication_counts(axes[2], pd.DataFrame(counts), pal)
            for ax in axes[1:]:
                ax.set_yticklabels([])
        fig.suptitle(study_title(style.get("title", "Duplicated vs non-duplicated images"), study))
        fig.text(
            0.5,
            0.005,
            "duplicated = the study's duplicated set (same images in every run); in nodup runs "
            "and the base model these images are not duplicated: the control",
            ha="center",
            fontsize=7,
        )
        fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


# ---------------------------------------------------------------- images


def _load_image(path, size: int | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size:
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im)


def gallery(
    matches: pd.DataFrame,
    generations_dir,
    images_dir,
    metadata: pd.DataFrame,
    study: str,
    title: str,
    size: int = 8,
    top_k: int = 3,
    dpi: int = 150,
):
    """The ``size`` generations with the highest top-1 similarity (rows, highest first), each beside
    its ``top_k`` training matches with their similarity; a match that is the prompt's own source
    image is marked ``source``. ``metadata``: the dataset's metadata.parquet (id → file)."""
    files = dict(zip(metadata["id"].astype(str), metadata["file"]))
    top1 = matches[matches["rank"] == 0].sort_values("similarity", ascending=False, kind="stable").head(size)
    n = len(top1)
    k = int(min(top_k, matches["rank"].max() + 1)) if len(matches) else 0
    fig, axes = plt.subplots(max(n, 1), k + 1, figsize=(1.6 * (k + 1), 1.75 * max(n, 1) + 0.7), squeeze=False)
    if n == 0:
        note(axes[0][0], "no generations in the matches table")
    for i, (_, g) in enumerate(top1.iterrows()):
        ax = axes[i][0]
        ax.imshow(_load_image(Path(generations_dir) / g["generation"], 128))
        ax.set_title(f"generation {Path(g['generation']).stem}", fontsize=6)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(f"#{i + 1}", fontsize=7)
        rows = matches[matches["generation"] == g["generation"]].sort_values("rank")
        for j in range(k):
            ax = axes[i][j + 1]
            ax.set_xticks([]), ax.set_yticks([])
            if j >= len(rows):
                ax.set_axis_off()
                continue
            r = rows.iloc[j]
            f = files.get(str(r["train_id"]))
            if f is None:
                note(ax, f"{r['train_id']}: not in metadata")
                continue
            ax.imshow(_load_image(Path(images_dir) / f, 128))
            src = " source" if bool(r.get("is_source", False)) else ""
            ax.set_title(
                f"match {j + 1}: {float(r['similarity']):.3f}{src}\n{r['train_id']}",
                fontsize=6,
                color="C3" if src else "k",
            )
    fig.suptitle(
        study_title(title, study) + "\nleft: generation; right: top training matches (cosine similarity)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


COMPONENTS = ["attn1", "attn2", "other"]
COMPONENT_COLOURS = {"attn1": "C0", "attn2": "C1", "other": "C2"}


def _block_key(name: str):
    """UNet blocks in data-flow order: conv_in/time_embedding…, down_blocks.N, mid_block, up_blocks.N, conv_out…"""
    kind, _, idx = name.partition(".")
    rank = {"down_blocks": 1, "mid_block": 2, "up_blocks": 3}.get(
        kind, 0 if name in ("conv_in", "time_proj", "time_embedding") else 4
    )
    return rank, int(idx) if idx.isdigit() else 0, name


def weightdiff_histograms(table: pd.DataFrame, style: Mapping, study: str, title: str):
    """Per-tensor relative L2 change ‖Δ‖₂ / ‖base‖₂ by component (histogram, log x) and the L2 norm of
    each block's whole difference (bars), from one run's weightdiff parquet; tensors that could not
    be compared (shape mismatch, in one model only) are counted in the title."""
    ok = table[table["l2"].notna()].copy()
    with themed(style):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        col = "rel_l2" if "rel_l2" in ok and ok["rel_l2"].notna().any() else "l2"
        vals = ok[ok[col] > 0]
        if vals.empty:
            note(ax1, "no tensor changed (all differences are zero)")
        else:
            sns.histplot(
                data=vals,
                x=col,
                hue="component",
                hue_order=[c for c in COMPONENTS if c in set(vals["component"])],
                palette=COMPONENT_COLOURS,
                log_scale=True,
                element="step",
                bins=30,
                ax=ax1,
            )
            ax1.set_xlabel(
                "relative L2 change per tensor, ‖Δ‖₂ / ‖base‖₂"
                if col == "rel_l2"
                else "L2 change per tensor, ‖Δ‖₂"
            )
            ax1.set_ylabel("tensors (count)")
        blocks = ok.groupby(["block", "component"])["l2"].apply(
            lambda s: float(np.sqrt((s.astype(float) ** 2).sum()))
        )
        blocks = blocks.rename("l2").reset_index()
        if blocks.empty:
            note(ax2, "no comparable tensors")
        else:
            order = sorted(set(blocks["block"]), key=_block_key)
            sns.barplot(
                data=blocks,
                y="block",
                x="l2",
                hue="component",
                order=order,
                palette=COMPONENT_COLOURS,
                hue_order=[c for c in COMPONENTS if c in set(blocks["component"])],
                ax=ax2,
            )
            ax2.set_xlabel("L2 norm of the block's difference, √Σ‖Δ‖₂² (weight units)")
            ax2.set_ylabel("UNet block")
        skipped = len(table) - len(ok)
        extra = f"\n{skipped} tensor(s) not compared (shape mismatch or in one model only)" if skipped else ""
        fig.suptitle(study_title(title, study) + extra, fontsize=10)
        fig.tight_layout()
    return fig


def sweep_grid(cells: Sequence[dict], study: str, title: str, n_show: int = 4):
    """A grid of generations: one row per run × sweep cell (scheduler, guidance scale, steps, negative
    prompt), columns = the same prompts and seeds in every cell. ``cells``: dicts with ``run``,
    ``preset`` (the cell's settings), ``dir`` (the generation folder)."""
    n_rows = max(len(cells), 1)
    counts = [len(list(Path(c["dir"]).glob("*.png"))) for c in cells]
    n_show = max(1, min(n_show, max(counts, default=1)))
    fig, axes = plt.subplots(n_rows, n_show, figsize=(1.5 * n_show + 2.2, 1.5 * n_rows + 0.8), squeeze=False)
    if not cells:
        note(axes[0][0], "no sweep cells")
    for i, cell in enumerate(cells):
        p = cell["preset"]
        label = (
            f"{cell['run']}\n{p.get('scheduler')} · CFG {p.get('guidance_scale')}\n{p.get('steps')} steps"
            + (f"\nneg: {p['negative_prompt'][:20]}" if p.get("negative_prompt") else "")
        )
        images = sorted(Path(cell["dir"]).glob("*.png"))[:n_show]
        for j in range(n_show):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(images):
                ax.imshow(_load_image(images[j]))
            else:
                ax.set_frame_on(False)
            if i == 0:
                ax.set_title(f"prompt/seed {j + 1}", fontsize=7)
        axes[i][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(
        study_title(title, study)
        + "\nrows: scheduler · guidance scale (CFG) · steps; columns: same prompt and seed",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- reading what the rules give


def read_matches(paths: Sequence) -> dict[tuple, pd.DataFrame]:
    """``{(dataset, embedder, run, preset): table}`` of matches tables (each says what it is)."""
    return dict(read_identified(p, MATCHES_IDENTITY, "retrieve") for p in paths)


def read_baseline_matches(paths: Sequence) -> dict[tuple, pd.DataFrame]:
    """``{(dataset, embedder): table}`` of train_baseline.parquet tables (each says what it is)."""
    return dict(read_identified(p, BASELINE_IDENTITY, "train_baseline") for p in paths)


def read_plans(paths: Sequence, ids: Sequence[Mapping]) -> dict[tuple, pd.DataFrame]:
    """``{(dataset, run): the run's duplication plan}``; ``ids``: the rule's params, one per path in
    the same order, ``{"dataset", "plan", "runs"}`` (the runs trained with that plan)."""
    if len(paths) != len(ids):
        raise ValueError(
            f"{len(paths)} plan file(s) but {len(ids)} plan id(s) in params: one per file, in order"
        )
    out = {}
    for path, key in zip(paths, ids):
        plan = pd.read_parquet(path)
        out.update({(key["dataset"], run): plan for run in key["runs"]})
    return out


def summary_figure(
    name: str,
    summary_csv,
    baselines_csv,
    matches=(),
    baseline_matches=(),
    plans=(),
    plan_ids=(),
    style: Mapping | None = None,
    study: str = "",
):
    """Draw one of :data:`SUMMARY_FIGURES` from the rule's inputs (paths; ``plan_ids``: see :func:`read_plans`)."""
    style = dict(style or {})
    summary = pd.read_csv(summary_csv, keep_default_na=True)
    baselines = pd.read_csv(baselines_csv)
    if name == "sim95_by_dup_cond":
        return sim95_by_dup_cond(summary, baselines, style, study)
    if name == "mitigation_tradeoff":
        return mitigation_tradeoff(summary, style, study)
    if name == "similarity_distributions":
        return similarity_distributions(
            read_matches(matches), read_baseline_matches(baseline_matches), style, study
        )
    if name == "replication_by_dataset_size":
        return replication_by_dataset_size(summary, baselines, style, study)
    if name == "duplicated_vs_not":
        return duplicated_vs_not(summary, read_matches(matches), read_plans(plans, plan_ids), style, study)
    raise ValueError(f"unknown figure {name!r}; allowed: {', '.join(SUMMARY_FIGURES)}")


def sweep_cells(generation_dirs: Sequence, sweep: Mapping) -> list[dict]:
    """Pair the sweep's generation folders with the cells' settings.

    ``sweep``: the rule's params, ``{"runs": [...], "cells": {cell preset name: preset},
    "generations": [{"run", "cell"}, ...]}`` with one ``generations`` entry per folder, in the
    folders' order; rows come in that order (run by run, cells in the sweep's product order).
    """
    dirs, names = list(generation_dirs), list(sweep["generations"])
    if len(dirs) != len(names):
        raise ValueError(
            f"{len(dirs)} generation folder(s) but {len(names)} named in params.sweep.generations"
        )
    out = []
    for d, name in zip(dirs, names):
        if name["cell"] not in sweep["cells"]:
            raise ValueError(
                f"sweep cell {name['cell']!r} of run {name['run']!r}: not among the sweep's cells "
                f"{', '.join(sweep['cells'])}"
            )
        out.append(
            {"run": name["run"], "cell": name["cell"], "preset": dict(sweep["cells"][name["cell"]]), "dir": d}
        )
    return out

"""Figures of the memorization benchmark: ROC curves of the detection metric, replication vs quality."""

from __future__ import annotations

import pandas as pd

from diffrep.figures import save_figure, study_title
from diffrep.memorization import MEMORIZED_LABELS, roc_auc, roc_curve


def roc_figure(detections: dict[str, pd.DataFrame], study: str, png) -> None:
    """One ROC curve per benchmark (memorised vs non-memorised prompts, all of them), AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for bench, det in detections.items():
        pos = det.loc[det["label"].isin(MEMORIZED_LABELS), "metric"]
        neg = det.loc[det["label"] == "none", "metric"]
        fpr, tpr, _ = roc_curve(pos, neg)
        ax.plot(
            fpr,
            tpr,
            drawstyle="steps-post",
            label=f"{bench} (AUC {roc_auc(pos, neg):.3f}, {len(pos)} vs {len(neg)})",
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false-positive rate (non-memorised prompts)")
    ax.set_ylabel("true-positive rate (memorised prompts)")
    ax.set_title(study_title("Detection: ||eps(x_t,c) - eps(x_t,0)||", study), fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, png)
    plt.close(fig)


def tradeoff_figure(mitigations: pd.DataFrame, threshold: float, study: str, png) -> None:
    """Replication of the memorised prompts (fraction above `threshold`) against FID of general prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"all_frac_above_{threshold}"
    markers = "osv^DPX*<>ph"
    fig, ax = plt.subplots(figsize=(6.5, 4))
    fid_known = pd.to_numeric(mitigations["fid"], errors="coerce").notna().any()
    for (bench, rows), color in zip(mitigations.groupby("benchmark", sort=False), plt.cm.tab10.colors):
        fid = pd.to_numeric(rows["fid"], errors="coerce")
        x = fid if fid_known else pd.Series(range(len(rows)), index=rows.index)
        for i, (xi, yi, name) in enumerate(zip(x, rows[col], rows["preset"])):
            # one legend entry per preset: labels written beside the points overlap where presets agree
            ax.scatter(xi, yi, color=color, marker=markers[i % len(markers)], label=f"{bench}: {name}")
    ax.set_xlabel("FID of general prompts (lower is better)" if fid_known else "preset (FID skipped)")
    ax.set_ylabel(f"memorised prompts: fraction > {threshold}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(study_title("Mitigations: replication vs quality", study), fontsize=9)
    save_figure(fig, png)
    plt.close(fig)

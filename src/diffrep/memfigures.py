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
    fig, ax = plt.subplots(figsize=(5, 4))
    for bench, rows in mitigations.groupby("benchmark"):
        fid = pd.to_numeric(rows["fid"], errors="coerce")
        x = fid if fid.notna().any() else pd.Series(range(len(rows)), index=rows.index)
        ax.scatter(x, rows[col], label=bench)
        for xi, yi, name in zip(x, rows[col], rows["preset"]):
            ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if not fid.notna().any():
            ax.set_xlabel("preset (FID skipped)")
    if ax.get_xlabel() == "":
        ax.set_xlabel("FID of general prompts (lower is better)")
    ax.set_ylabel(f"memorised prompts: fraction of generations > {threshold}")
    ax.set_title(study_title("Mitigations: replication vs quality", study), fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, png)
    plt.close(fig)

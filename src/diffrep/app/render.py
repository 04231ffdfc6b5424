"""HTML fragments of the app: summary table, similarity histogram (inline SVG), gallery, try result.

Plain functions from data to escaped HTML strings, so that the page needs no template engine and
every fragment is unit-testable.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

import numpy as np

from diffrep.similarity import STAT_KEYS

# The summary row's columns the page shows first (the full row is behind a disclosure).
SUMMARY_KEYS = (
    *STAT_KEYS,
    "threshold",
    "source_match_rate",
    "duplicated_p95",
    "not_duplicated_p95",
    "train_baseline_p95",
    "train_baseline_mean",
    "fid",
    "clipscore",
    "duplication",
    "conditioning",
    "train_mitigation",
    "inference_mitigation",
    "scheduler",
    "guidance_scale",
    "steps",
    "embedder",
    "preprocess",
    "index",
    "top_k",
    "n_train",
    "base_model",
    "model_manifest_sha256",
    "dataset_manifest_sha256",
)


def message(text: str, kind: str = "error") -> str:
    return f'<p class="msg {escape(kind)}">{escape(text)}</p>'


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


KEY_STATISTICS = ("n", "mean", "p95", "frac_above", "source_match_rate", "train_baseline_p95", "fid")


def summary_table(row: dict, keys=SUMMARY_KEYS) -> str:
    """A two-column table of the summary row's statistics and provenance (known keys first)."""
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fmt(row[k]))}</td></tr>" for k in keys if k in row)
    return f'<table class="summary">{cells}</table>'


def summary(row: dict) -> str:
    """The key statistics, then the whole summary row behind a disclosure."""
    return (
        summary_table(row, KEY_STATISTICS)
        + f"<details><summary>summary row: statistics and provenance</summary>{summary_table(row)}</details>"
    )


def histogram_svg(
    top1: np.ndarray,
    baseline: np.ndarray | None,
    threshold: float,
    width: int = 360,
    height: int = 160,
    bins: int = 30,
) -> str:
    """Overlaid density histograms of top-1 similarity (run) and the train-vs-train baseline."""
    series = [("run", top1, "#c0392b")] + (
        [("train vs train", baseline, "#2c7fb8")] if baseline is not None else []
    )
    values = np.concatenate([s for _, s, _ in series if len(s)] or [np.zeros(1)])
    lo, hi = float(min(values.min(), threshold, 0.0)), float(max(values.max(), threshold, 1.0))
    edges = np.linspace(lo, hi, bins + 1)
    dens = [np.histogram(s, edges, density=True)[0] if len(s) else np.zeros(bins) for _, s, _ in series]
    top = max(float(max(d.max() for d in dens)), 1e-9)
    pad = 20
    x = lambda v: pad + (v - lo) / (hi - lo) * (width - 2 * pad)  # noqa: E731
    y = lambda d: height - pad - d / top * (height - 2 * pad)  # noqa: E731
    parts = []
    for (label, _, color), d in zip(series, dens):
        pts = " ".join(
            f"{x(e):.1f},{y(v):.1f} {x(e2):.1f},{y(v):.1f}" for e, e2, v in zip(edges, edges[1:], d)
        )
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"><title>{label}</title></polyline>'
        )
    tx = x(threshold)
    parts.append(
        f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad}" y2="{height - pad}" stroke="#000" stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{tx + 3:.1f}" y="{pad + 10}" font-size="10">threshold {threshold:g}</text>')
    for v in (lo, hi):
        parts.append(f'<text x="{x(v) - 8:.1f}" y="{height - 5}" font-size="10">{v:.2f}</text>')
    legend = " ".join(f'<span style="color:{c}">■ {escape(lbl)}</span>' for lbl, _, c in series)
    return (
        f'<figure class="hist"><svg width="{width}" height="{height}" role="img" '
        f'aria-label="top-1 similarity distribution">{"".join(parts)}</svg>'
        f"<figcaption>top-1 similarity: {legend}</figcaption></figure>"
    )


def _thumb(src: str, caption: str, cls: str = "") -> str:
    return (
        f'<figure class="thumb {cls}"><img src="{escape(src)}" alt="{escape(caption)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def train_src(dataset: str, train_id: str) -> str:
    return f"/media/train/{quote(dataset)}/{quote(train_id, safe='')}"


def gallery(rows: list[dict], dataset: str, run: str, preset: str, threshold: float) -> str:
    """Rows of generation + top matches, sorted by top-1 similarity, with the threshold line."""
    out, marked = [], False
    for row in rows:
        if not marked and row["top1"] <= threshold:
            out.append(f'<div class="threshold">— replication threshold {threshold:g} —</div>')
            marked = True
        gen_src = f"/media/gen/{quote(dataset)}/{quote(run)}/{quote(preset)}/{quote(row['generation'])}"
        cells = [_thumb(gen_src, f"{row['generation']}: {row['prompt']}", "gen")]
        cells += [
            _thumb(train_src(dataset, t), f"{t} · {s:.3f}", "above" if s > threshold else "")
            for t, s in row["matches"]
        ]
        out.append(f'<div class="gallery-row">{"".join(cells)}</div>')
    if not marked:
        out.append(f'<div class="threshold">— replication threshold {threshold:g} —</div>')
    return f'<div class="gallery">{"".join(out)}</div>'


def try_result(res: dict, dataset: str) -> str:
    """The try-a-prompt answer: the image, notes, and the matches table."""
    notes = "".join(message(n, "note") for n in res["notes"])
    settings = ", ".join(
        f"{k} {v!r}" if isinstance(v, str) else f"{k} {v}" for k, v in res.get("settings", {}).items()
    )
    verdict = (
        f"top-1 similarity {res['matches'][0][1]:.3f} "
        f"{'crosses' if res['crosses'] else 'stays below'} the threshold {res['threshold']:g}"
        if res["matches"]
        else "no training match found"
    )
    rows = "".join(
        f'<tr class="{"above" if s > res["threshold"] else ""}"><td>{i + 1}</td>'
        f'<td><img src="{escape(train_src(dataset, t))}" alt="{escape(t)}"></td>'
        f"<td>{escape(t)}</td><td>{s:.4f}</td></tr>"
        for i, (t, s) in enumerate(res["matches"])
    )
    return (
        f'{notes}<div class="try-out"><figure class="thumb gen"><img id="try-image" '
        f'src="/media/try/{escape(res["image"])}" alt="generated image">'
        f"<figcaption>{escape(res['prompt_used'])} · seed {res['seed']} · {res['seconds']} s</figcaption></figure>"
        f'<div><p class="verdict {"above" if res["crosses"] else ""}">{escape(verdict)}</p>'
        f'<p class="preset">{escape(res["run"])} · preset {escape(res["preset"])}: {escape(settings)}</p>'
        f'<table id="try-matches" class="matches"><tr><th>rank</th><th>training image</th><th>id</th>'
        f"<th>similarity</th></tr>{rows}</table></div></div>"
    )


def validation_table(res: dict, dataset: str) -> str:
    """Prompts as rows, one column per model: image, top-1 training match and similarity, CLIP score."""
    runs = list(res["results"])
    head = "".join(f"<th>{escape(r)}</th>" for r in runs)
    body = []
    for i, prompt in enumerate(res["prompts"]):
        cells = []
        for run in runs:
            r = res["results"][run][i]
            above = "above" if r["similarity"] > res["threshold"] else ""
            clip = "CLIP score off" if r["clip"] is None else f"CLIP score {r['clip']:.1f}"
            cells.append(
                f'<td class="{above}"><img src="/media/try/{escape(r["image"])}" alt="{escape(run)}">'
                f'<img src="{escape(train_src(dataset, r["train_id"] or ""))}" alt="top-1 match">'
                f"<br>top-1 {escape(str(r['train_id']))} · {r['similarity']:.3f}<br>{clip}</td>"
            )
        body.append(f"<tr><td>{escape(prompt)}<br>seed {i}</td>{''.join(cells)}</tr>")
    return (
        f'<p class="msg info">{len(res["prompts"])} prompts, same seeds for every model; {res["seconds"]} s; '
        f"threshold {res['threshold']:g}</p>"
        f'<table id="val-table" class="matches"><tr><th>prompt</th>{head}</tr>{"".join(body)}</table>'
    )

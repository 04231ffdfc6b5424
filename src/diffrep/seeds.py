"""Spread over seeds: the same study run with different master seeds, summarised per setting.

A difference between two settings means something only when it is larger than what changing the
seed alone does. Run the study once per seed under its own name (``--config seed=1
study=mini-seed1`` writes ``results/mini-seed1/``), then::

    python -m diffrep.seeds results/mini/tables/summary.csv results/mini-seed1/tables/summary.csv \\
        --out results/mini-seeds.csv

prints one row per dataset × run × preset × embedder with the mean, standard deviation (ddof 1),
minimum and maximum of each metric over the seeds, and writes the same table as CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["dataset", "run", "preset", "embedder"]
DEFAULT_METRICS = [
    "p95", "mean", "frac_above", "source_match_rate", "top1_in_dup_set",
    "duplicated_source_match_rate", "not_duplicated_source_match_rate",
    "duplicated_p95", "not_duplicated_p95", "fid",
]


class SeedsError(ValueError):
    """Summaries that cannot be compared; the message names the file."""


def read_summaries(paths) -> pd.DataFrame:
    """Concatenate summary.csv files, one seed each; refuse a seed given twice or a missing column."""
    frames, seen = [], {}
    for p in paths:
        df = pd.read_csv(p)
        missing = {"seed", *KEYS} - set(df.columns)
        if missing:
            raise SeedsError(f"{p}: columns {sorted(missing)} missing (a summary.csv written before seeds were recorded?)")
        seeds = set(df["seed"].dropna().astype(int))
        if len(seeds) != 1:
            raise SeedsError(f"{p}: expected one seed, found {sorted(seeds) or 'none'}")
        seed = seeds.pop()
        if seed in seen:
            raise SeedsError(f"{p} and {seen[seed]} both have seed {seed}: their spread would be zero by construction")
        seen[seed] = p
        frames.append(df.assign(source=str(p)))
    if len(frames) < 2:
        raise SeedsError("give at least two summary.csv files (one per seed)")
    return pd.concat(frames, ignore_index=True)


def spread(summaries: pd.DataFrame, metrics=DEFAULT_METRICS) -> pd.DataFrame:
    """Per setting (KEYS): ``{metric}_mean``, ``_sd``, ``_min``, ``_max`` over seeds, and ``n_seeds``.

    Every setting must be present for every seed (the same config apart from the seed); a metric
    that is not numeric in the summaries (``skipped``) or absent is left out.
    """
    n_seeds = summaries["seed"].nunique()
    counts = summaries.groupby(KEYS)["seed"].nunique()
    partial = counts[counts != n_seeds]
    if len(partial):
        raise SeedsError(
            f"settings not measured for every seed ({n_seeds} seeds): "
            + ", ".join("/".join(map(str, k)) for k in partial.index[:5])
        )
    rows = []
    for key, group in summaries.groupby(KEYS, sort=True):
        row = dict(zip(KEYS, key), n_seeds=len(group), seeds=" ".join(map(str, sorted(group["seed"]))))
        for m in metrics:
            if m not in group:
                continue
            values = pd.to_numeric(group[m], errors="coerce")
            if values.isna().all():
                continue
            v = values.to_numpy(dtype=float)
            row.update({
                f"{m}_mean": np.nanmean(v), f"{m}_sd": np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else np.nan,
                f"{m}_min": np.nanmin(v), f"{m}_max": np.nanmax(v),
            })
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, metrics=DEFAULT_METRICS, digits: int = 3) -> str:
    """``mean ± sd`` per metric, one line per setting, as a Markdown table."""
    shown = [m for m in metrics if f"{m}_mean" in table]
    lines = ["| " + " | ".join(["run", "preset", *shown]) + " |", "|" + "---|" * (2 + len(shown))]
    for _, r in table.iterrows():
        cells = [f"{r[f'{m}_mean']:.{digits}f} ± {r[f'{m}_sd']:.{digits}f}" if pd.notna(r[f"{m}_mean"]) else ""
                 for m in shown]
        lines.append("| " + " | ".join([str(r["run"]), str(r["preset"]), *cells]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffrep.seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", type=Path, help="summary.csv of each seed")
    ap.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS, help="summary.csv columns to summarise")
    ap.add_argument("--out", type=Path, help="write the table as CSV")
    args = ap.parse_args(argv)
    try:
        table = spread(read_summaries(args.summaries), args.metrics)
    except (SeedsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(markdown(table, args.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Summary over seeds (and machines): the same study run with different master seeds, per setting.

A difference between two settings means something only when it is larger than what changing the
seed alone does. Run the study once per seed under its own name (``--config seed=1
study=mini-seed1`` writes ``results/mini-seed1/``), then::

    python -m diffrep.seeds results/mini/tables/summary.csv \\
        results/mini-seed1/tables/summary.csv --out results/mini-seeds.csv

prints one row per dataset × run × preset × embedder with the mean, the seed spread (standard
deviation over seeds, ddof 1), minimum and maximum of each metric, and writes the same table as CSV.

Machines. Every summary.csv records the platform it was made on (``platform_id``, ``platform``:
:mod:`diffrep.provenance`). Summaries from several machines may be combined, the same seed
included: the seed spread is then computed within each machine (pooled), and
``{metric}_machine_range`` is the largest difference between machines on the same seed, the
number to hold against the seed spread (docs/reproducibility.md). A summary without a platform
column counts as machine ``unknown``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["dataset", "run", "preset", "embedder"]
DEFAULT_METRICS = [
    "p95",
    "mean",
    "frac_above",
    "duplicated_frac_above",
    "not_duplicated_frac_above",
    "source_match_rate",
    "top1_in_dup_set",
    "duplicated_source_match_rate",
    "not_duplicated_source_match_rate",
    "duplicated_p95",
    "not_duplicated_p95",
    "fid",
]
UNKNOWN_MACHINE = "unknown"


class SeedSummaryError(ValueError):
    """Summaries that cannot be compared; the message names the file."""


def _single(df: pd.DataFrame, column: str, path) -> object:
    values = set(df[column].dropna())
    if len(values) > 1:
        raise SeedSummaryError(f"{path}: expected one {column}, found {sorted(map(str, values))}")
    return values.pop() if values else None


def read_summary(path) -> pd.DataFrame:
    """One summary.csv with ``source``, ``machine`` (its platform_id or ``unknown``) and
    ``machine_description`` columns; refuses a file without one seed or without the key columns."""
    df = pd.read_csv(path)
    missing = {"seed", *KEYS} - set(df.columns)
    if missing:
        raise SeedSummaryError(
            f"{path}: columns {sorted(missing)} missing (a summary.csv written before seeds were recorded?)"
        )
    seeds = set(df["seed"].dropna().astype(int))
    if len(seeds) != 1:
        raise SeedSummaryError(f"{path}: expected one seed, found {sorted(seeds) or 'none'}")
    machine = _single(df, "platform_id", path) if "platform_id" in df else None
    description = _single(df, "platform", path) if "platform" in df else None
    return df.assign(
        source=str(path), machine=str(machine or UNKNOWN_MACHINE), machine_description=description or ""
    )


def read_summaries(paths) -> pd.DataFrame:
    """Concatenate summary.csv files, one seed on one machine each; refuse the same seed on the
    same machine twice (its spread would be zero by construction)."""
    frames, seen = [], {}
    for p in paths:
        df = read_summary(p)
        key = (int(df["seed"].iloc[0]), df["machine"].iloc[0])
        if key in seen:
            raise SeedSummaryError(
                f"{p} and {seen[key]} both have seed {key[0]} on machine {key[1]}: "
                "their spread would be zero by construction"
            )
        seen[key] = p
        frames.append(df)
    if len(frames) < 2:
        raise SeedSummaryError("give at least two summary.csv files (one per seed or machine)")
    return pd.concat(frames, ignore_index=True)


def check_complete(summaries: pd.DataFrame) -> None:
    """Every setting must be present in every summary (the same config apart from seed/machine)."""
    n_files = summaries["source"].nunique()
    counts = summaries.groupby(KEYS)["source"].nunique()
    partial = counts[counts != n_files]
    if len(partial):
        raise SeedSummaryError(
            f"settings not measured in every summary ({n_files} files): "
            + ", ".join("/".join(map(str, k)) for k in partial.index[:5])
        )


def seed_sd(values: pd.Series, machines: pd.Series) -> float:
    """Standard deviation over seeds (ddof 1) within each machine, pooled over machines (weighted
    by degrees of freedom); NaN when no machine has two finite values."""
    sum_sq, dof = 0.0, 0
    for _, v in values.groupby(machines.to_numpy()):
        v = v.dropna().to_numpy(dtype=float)
        if len(v) > 1:
            sum_sq += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return float(np.sqrt(sum_sq / dof)) if dof else float("nan")


def machine_range(values: pd.Series, seeds: pd.Series) -> float:
    """Largest difference between machines on the same seed (max over seeds measured on two or
    more machines of max - min); NaN when no seed was run on two machines."""
    ranges = [v.max() - v.min() for _, v in values.groupby(seeds.to_numpy()) if v.notna().sum() > 1]
    return float(max(ranges)) if ranges else float("nan")


def _metric_columns(group: pd.DataFrame, metric: str, several_machines: bool) -> dict:
    values = pd.to_numeric(group[metric], errors="coerce")
    if values.isna().all():
        return {}
    v = values.to_numpy(dtype=float)
    out = {
        f"{metric}_mean": np.nanmean(v),
        f"{metric}_sd": seed_sd(values, group["machine"]),
        f"{metric}_min": np.nanmin(v),
        f"{metric}_max": np.nanmax(v),
    }
    if several_machines:
        out[f"{metric}_machine_range"] = machine_range(values, group["seed"])
    return out


def spread(summaries: pd.DataFrame, metrics=DEFAULT_METRICS) -> pd.DataFrame:
    """Per setting (KEYS): ``{metric}_mean``, ``_sd`` (seed spread), ``_min``, ``_max`` over every
    summary, ``_machine_range`` when several machines are combined; ``n_seeds``, ``seeds``,
    ``n_machines``, ``machines``.

    A metric that is not numeric in the summaries (``skipped``) or absent is left out.
    """
    check_complete(summaries)
    several = summaries["machine"].nunique() > 1
    rows = []
    for key, group in summaries.groupby(KEYS, sort=True):
        seeds = sorted(set(group["seed"].astype(int)))
        row = dict(
            zip(KEYS, key),
            n_seeds=len(seeds),
            seeds=" ".join(map(str, seeds)),
            n_machines=group["machine"].nunique(),
            machines=" ".join(sorted(set(group["machine"]))),
        )
        for m in metrics:
            if m in group:
                row.update(_metric_columns(group, m, several))
        rows.append(row)
    return pd.DataFrame(rows)


def machines(summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per machine: ``machine`` (platform id), ``platform`` (description), ``seeds``."""
    rows = []
    for machine, group in summaries.groupby("machine", sort=True):
        seeds = sorted(set(group["seed"].astype(int)))
        rows.append(
            {
                "machine": machine,
                "platform": group["machine_description"].iloc[0],
                "seeds": " ".join(map(str, seeds)),
            }
        )
    return pd.DataFrame(rows)


def _cell(r: pd.Series, m: str, digits: int) -> str:
    if pd.isna(r.get(f"{m}_mean")):
        return ""
    text = f"{r[f'{m}_mean']:.{digits}f} ± {r[f'{m}_sd']:.{digits}f}"
    if f"{m}_machine_range" in r and pd.notna(r[f"{m}_machine_range"]):
        text += f" (machines Δ {r[f'{m}_machine_range']:.{digits}f})"
    return text


def markdown(table: pd.DataFrame, metrics=DEFAULT_METRICS, digits: int = 3, machine_table=None) -> str:
    """``mean ± seed sd`` (and ``machines Δ range`` if several) per metric, one line per setting,
    as a Markdown table; `machine_table` (:func:`machines`), if given, is listed first."""
    lines = []
    if machine_table is not None and len(machine_table) > 1:
        lines += (
            ["Machines:"]
            + [
                f"- {r.machine} (seeds {r.seeds}): {r.platform or 'platform not recorded'}"
                for r in machine_table.itertuples()
            ]
            + [""]
        )
    shown = [m for m in metrics if f"{m}_mean" in table]
    lines += ["| " + " | ".join(["run", "preset", *shown]) + " |", "|" + "---|" * (2 + len(shown))]
    for _, r in table.iterrows():
        cells = [_cell(r, m, digits) for m in shown]
        lines.append("| " + " | ".join([str(r["run"]), str(r["preset"]), *cells]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m diffrep.seeds", description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", type=Path, help="summary.csv of each seed (and machine)")
    ap.add_argument("--metrics", nargs="+", default=DEFAULT_METRICS, help="summary.csv columns to summarise")
    ap.add_argument("--out", type=Path, help="write the table as CSV")
    args = ap.parse_args(argv)
    try:
        summaries = read_summaries(args.summaries)
        table = spread(summaries, args.metrics)
    except (SeedSummaryError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(markdown(table, args.metrics, machine_table=machines(summaries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

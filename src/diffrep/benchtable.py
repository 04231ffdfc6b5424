"""Per-rule time and memory of a run, from the benchmark files its rules wrote.

Snakemake's ``benchmark:`` writes one TSV per job (``s``, ``max_rss`` in MB, ``cpu_time``, ...). A
study writes them under ``benchmarks/{study}/{kind}/...`` and the model builds under
``benchmarks/models/``; the first folder below the root names the kind of job (finetune, generate,
embed, fid, ...). ``python -m diffrep.benchtable benchmarks/rehearsal benchmarks/models`` prints
the per-kind summary as a markdown table (jobs, total and longest time, peak resident memory and the
job that reached it), the numbers docs/rehearsal.md reports.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

COLUMNS = ["kind", "job", "s", "max_rss_mb", "cpu_s"]


def read_benchmarks(root: str | os.PathLike) -> pd.DataFrame:
    """Every benchmark TSV under `root`: one row per job (kind = first folder, job = the rest)."""
    root = Path(root)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root).with_suffix("")
        try:
            last = pd.read_csv(path, sep="\t").iloc[-1]  # a re-run appends a row: the last is the run
        except (pd.errors.EmptyDataError, IndexError):
            continue  # a job that is still running has an empty file
        kind = rel.parts[0] if len(rel.parts) > 1 else root.name
        rows.append(
            {
                "kind": kind,
                "job": "/".join(rel.parts[1:]) if len(rel.parts) > 1 else rel.name,
                "s": float(last["s"]),
                "max_rss_mb": float(last["max_rss"]),
                "cpu_s": float(last["cpu_time"]) if "cpu_time" in last else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def summarise(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per kind: jobs, total and longest wall time, peak resident memory and the job that reached it."""
    out = []
    for kind, part in jobs.groupby("kind", sort=True):
        peak = part.loc[part["max_rss_mb"].idxmax()]
        out.append(
            {
                "kind": kind,
                "jobs": len(part),
                "total_min": part["s"].sum() / 60,
                "longest_s": part["s"].max(),
                "peak_rss_gb": peak["max_rss_mb"] / 1024,
                "peak_job": peak["job"],
            }
        )
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", help="benchmark folders (benchmarks/<study>, benchmarks/models)")
    ap.add_argument("--jobs", action="store_true", help="list every job, not the per-kind summary")
    args = ap.parse_args(argv)
    jobs = pd.concat([read_benchmarks(r) for r in args.roots], ignore_index=True)
    table = jobs.sort_values(["kind", "s"], ascending=[True, False]) if args.jobs else summarise(jobs)
    print(table.to_markdown(index=False, floatfmt=".1f"))


if __name__ == "__main__":
    main()

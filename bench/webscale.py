"""Benchmark of the web-scale search (docs/webscale.md): sharded vs monolithic exact search, approximate
index vs exact search. Ratios measured in one run; rows appended to bench/results.csv like bench/run.py.

    .venv/bin/python bench/webscale.py            # 10k generations x 1M references, 512-d (about 2 GB)
    .venv/bin/python bench/webscale.py --quick    # 1k x 50k: a smoke test of the script

- sharded: the workflow's code path (diffrep.websearch.search_shard per shard, merge_topk over the
  shard results), shard descriptors made one shard at a time (as the search jobs load one shard's npz),
  vs one faiss IndexFlatIP over all references; time, peak resident memory above the start, and
  whether the merged top-k equals the monolithic one. The bound: one shard's descriptors
  (shard_size x d x 4 bytes) plus 2 x generations x k result rows.
- approximate: diffrep.approxsearch IVF-PQ (trained on a seeded sample, exact re-ranking of 100
  candidates) vs exact search; time of the search and recall@1 / recall@10 on the generations.
Generations are near-copies of random references plus noise (0.6 / 0.4), as in bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from run import THREADS, _reset_peak, _rss_kb, descriptors, row, set_threads  # noqa: E402

SHARD = int(os.environ.get("DIFFREP_BENCH_SHARD", 100_000))  # rows per shard (the children read it)


def _shard(i: int, n_ref: int, dim: int):
    """References of shard i (seeded per shard, so any shard can be made alone)."""
    n = min(SHARD, n_ref - i * SHARD)
    return descriptors(n, dim, seed=1000 + i)


def _generations(n_gen: int, n_ref: int, dim: int):
    import numpy as np

    src = np.random.default_rng(3).integers(0, n_ref, n_gen)
    shards = sorted(set(src // SHARD))
    gen = descriptors(n_gen, dim, seed=2)
    for s in shards:
        ref = _shard(int(s), n_ref, dim)
        mask = src // SHARD == s
        gen[mask] = 0.6 * ref[src[mask] - s * SHARD] + 0.4 * gen[mask]
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    return gen


def child(method: str, n_gen: int, n_ref: int, dim: int, k: int, out: str) -> None:
    """One variant in a fresh process; prints a JSON line (seconds, peak_mb) and saves the top-k rows."""
    import faiss
    import numpy as np
    import pandas as pd

    import diffrep.approxsearch  # noqa: F401
    import diffrep.websearch  # noqa: F401  (imported before the baseline: library pages are not counted)

    set_threads()
    gen = _generations(n_gen, n_ref, dim)
    ids = [str(i) for i in range(n_gen)]
    n_shards = -(-n_ref // SHARD)
    base_kb, peak_ok = _rss_kb("VmRSS"), _reset_peak()
    t0 = time.perf_counter()
    if method == "monolithic":
        index = faiss.IndexFlatIP(dim)
        for s in range(n_shards):
            index.add(_shard(s, n_ref, dim))
        _, rows = index.search(gen, k)
    elif method == "sharded":
        from diffrep.websearch import merge_topk, search_shard

        def frames():
            for s in range(n_shards):
                ref = _shard(s, n_ref, dim)
                idx = np.arange(s * SHARD, s * SHARD + len(ref))
                meta = pd.DataFrame({"key": idx, "index": idx, "url": "", "caption": ""})
                yield search_shard(ids, gen, ref, meta, s, k)

        merged = merge_topk(frames(), k)
        merged = merged.assign(g=merged["generation"].astype(int)).sort_values(["g", "rank"])
        rows = merged["index"].to_numpy().reshape(n_gen, k)
    elif method in ("exact", "ivfpq"):
        from diffrep.approxsearch import add_shards, build_index, search_reranked

        refs = np.vstack([_shard(s, n_ref, dim) for s in range(n_shards)])  # both sides hold all
        base_kb, peak_ok = _rss_kb("VmRSS"), _reset_peak()
        t0 = time.perf_counter()
        if method == "exact":
            index = faiss.IndexFlatIP(dim)
            index.add(refs)
            _, rows = index.search(gen, k)
        else:
            sample = refs[np.random.default_rng(0).choice(len(refs), min(len(refs), 50_000), replace=False)]
            index = build_index(sample, "ivfpq", nlist=max(16, int(4 * np.sqrt(n_ref))), m=64, seed=0)
            add_shards(index, [(np.arange(len(refs)), refs)])
            build = time.perf_counter() - t0
            t0 = (
                time.perf_counter()
            )  # the ratio compares searches; the build (once per collection) is reported
            _, rows = search_reranked(index, gen, k, 100, vectors_of=lambda r: refs[r], nprobe=16)
    else:
        raise ValueError(f"unknown method {method!r}")
    seconds = time.perf_counter() - t0
    peak_kb = _rss_kb("VmHWM") if peak_ok else None
    np.save(out, np.asarray(rows, dtype=np.int64))
    peak_mb = (peak_kb - base_kb) / 1024 if peak_kb else None
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "build": locals().get("build")}))


def _run(method, n_gen, n_ref, dim, k, tmp):
    import numpy as np

    out = Path(tmp) / f"{method}.npy"
    args = [sys.executable, __file__, "--child", method, str(n_gen), str(n_ref), str(dim), str(k), str(out)]
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "DIFFREP_BENCH_SHARD": str(SHARD)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "rows": np.load(out)}


def bench(n_gen: int, n_ref: int, dim: int = 512, k: int = 10) -> list[dict]:
    import tempfile

    from diffrep.approxsearch import recall

    size = f"{n_gen // 1000}k gen x {n_ref / 1e6:g}M ref x {dim}-d, top-{k}"
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-webscale-") as tmp:
        res = {m: _run(m, n_gen, n_ref, dim, k, tmp) for m in ("sharded", "monolithic", "exact", "ivfpq")}
    equal = bool((res["sharded"]["rows"] == res["monolithic"]["rows"]).all())
    bound = (SHARD * dim * 4 + 2 * n_gen * k * 100) / 2**20  # a shard + result rows (~100 B each)
    sharded, mono = "sharded exact (websearch.search_shard + merge_topk)", "one faiss IndexFlatIP"
    r1, r10 = (
        recall(res["ivfpq"]["rows"], res["exact"]["rows"], 1),
        recall(res["ivfpq"]["rows"], res["exact"]["rows"], 10),
    )
    build = res["ivfpq"]["build"]
    specs = [
        (
            f"time, {size}",
            "sharded",
            "monolithic",
            "s",
            sharded,
            mono,
            f"merged top-k equals monolithic: {equal}; shards of {SHARD}; {THREADS} threads",
        ),
        (
            f"peak memory, {size}",
            "sharded",
            "monolithic",
            "MB",
            sharded,
            mono,
            f"bound for sharded: one shard + 2 x gen x k rows = {bound:.0f} MB",
        ),
        (
            f"approximate search time, {size}",
            "ivfpq",
            "exact",
            "s",
            "IVF-PQ + exact re-ranking of 100 (approxsearch)",
            "faiss IndexFlatIP",
            f"recall@1 {r1:.4f}, recall@10 {r10:.4f} against exact; index build {build:.1f} s (once per "
            "collection, not in the time)",
        ),
    ]
    value = {"s": "seconds", "MB": "peak_mb"}
    return [
        row("webscale", measure, res[a][value[unit]], res[b][value[unit]], unit, a_how, b_how, detail)
        for measure, a, b, unit, a_how, b_how, detail in specs
    ]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        method, n_gen, n_ref, dim, k, out = argv[1:7]
        child(method, int(n_gen), int(n_ref), int(dim), int(k), out)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k generations x 50k references")
    ap.add_argument("--out", type=Path, default=HERE / "results.csv", help="rows are appended")
    args = ap.parse_args(argv)
    global SHARD
    if args.quick:
        SHARD = 10_000
    rows = bench(1000, 50_000) if args.quick else bench(10_000, 1_000_000)
    from run import print_table

    print_table(rows)
    import csv

    new = not args.out.exists()
    with open(args.out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the web-scale search (docs/webscale.md): sharded vs monolithic exact search, the
approximate index (IVF-PQ + exact re-ranking) vs exact search. Ratios measured in one run.

Run as the ``webscale`` section of bench/run.py (``bench/run.py --only webscale``: 10k generations x
1M references, 512-d, about 4 minutes per data set on 2 cores; ``--quick``: 1k x 50k), which writes
its rows to bench/results.csv beside the other sections' rows. ``bench/webscale.py --sweep DATA``
prints the approximate index's trade-off (nlist, m, nprobe; HNSW's efSearch with ``--hnsw``) against
one exact search on the same data (``--draw N``: a fresh data set of the same design; ``--ivfpq
NLIST:M:NPROBE``: only these settings). ``bench/webscale.py --at-target [DATA ...]`` times the
approximate search at the settings the workflow's recall-target tuning chooses, against exact search,
on the clustered, random and mixture data (DESIGNS, below; printed, not written to results.csv).

The references (L2-normalised random 512-d float32, 2 GB at 1M) are written once to a file, shard
by shard; each variant runs in a fresh process that reads them from that file as the workflow's jobs
read shard files, one shard at a time where the method allows it. Peak resident memory is counted
from before the first reference is read (Linux VmHWM after resetting it), so it includes what each
method holds of the collection:
- sharded: the workflow's code path (diffrep.websearch.search_shard per shard, merge_topk over the
  shard results). Bound: one shard's descriptors (shard x d x 4 bytes), one shard's search result and
  the running top-k (2 x generations x k rows of about 100 bytes);
- monolithic: one faiss IndexFlatIP over all references (holds all of them);
- ivfpq: diffrep.approxsearch IVF-PQ trained on a seeded sample, shards added one at a time,
  candidates re-ranked exactly with diffrep.webapprox.rerank reading the shards again (the
  approx_search rule's code path); the search time counts index search and re-ranking, the build
  (once per collection) is reported beside it. Recall@1 / @10 are against the exact top-k.
Generations are near-copies of random references plus noise (0.6 / 0.4, L2-normalised), as in the
retrieval section: each has one clear best match; its other neighbours in structureless random data
are all at similarity ~0 +- 0.04, which is why recall@10 of any approximate index is low here.
The section runs twice: on those random references and on clustered ones (DATA, below).
"""

from __future__ import annotations

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

# the IVF-PQ settings of the run, fixed before the 1M run (which measured recall@1 0.946 with them;
# docs/webscale.md has the nprobe trade-off measured afterwards)
IVFPQ = dict(nlist=512, m=64, nbits=8, train=25_600, nprobe=32, candidates=100)


def _read_shard(path: Path, s: int, shard: int, n_ref: int, dim: int):
    """Rows [s*shard, (s+1)*shard) of the references file, read (not mapped) into memory."""
    import numpy as np

    n = min(shard, n_ref - s * shard)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        read_header(f)
        f.seek(f.tell() + s * shard * dim * 4)
        return np.fromfile(f, dtype=np.float32, count=n * dim).reshape(n, dim)


# The clustered references, fixed on 2026-12-02 before any run of them: n_ref / 100 cluster centres
# (random unit vectors, seed 7); each reference is normalise(0.8 centre + 0.6 unit noise) of a centre
# drawn uniformly (cosine to its centre about 0.8, to another member of its cluster about 0.64),
# groups of near-duplicates as a web collection has them; the generations are made from them as
# from the random ones.
# The mixture, fixed before any run of it (the design of an independent check of the approximate
# index): each reference is, with probability 0.6 (seeded per shard), a member of one of 100 clusters
# (random unit centres, seed 7; a member is normalise(0.8 centre + 0.6 unit noise) as above), else a
# random unit vector; 1M references are then 60 % in clusters of about 6 000, 40 % structureless.
DATA = ("random", "clustered")  # the bench/run.py section's data
DESIGNS = (*DATA, "mixture")  # --sweep and --at-target


def _reference_shard(n: int, dim: int, s: int, data: str, centres, draw: int = 0):
    import numpy as np

    s += 100_000 * draw  # another draw: other seeds for every shard
    if data == "random":
        return descriptors(n, dim, seed=1000 + s)
    rng = np.random.default_rng(1000 + s)
    x = 0.8 * centres[rng.integers(0, len(centres), n)] + 0.6 * descriptors(n, dim, seed=2000 + s)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    if data == "mixture":  # 40 % of the rows random
        random_rows = rng.random(n) >= 0.6
        x[random_rows] = descriptors(n, dim, seed=3000 + s)[random_rows]
    return x


def write_references(
    path: Path, n_ref: int, dim: int, shard: int, data: str = "random", draw: int = 0
) -> None:
    """The references file (.npy), written shard by shard (each shard seeded by its number; ``draw`` > 0:
    other seeds throughout, a fresh data set of the same design)."""
    import numpy as np

    n_centres = {"clustered": max(1, n_ref // 100), "mixture": 100}.get(data)
    centres = descriptors(n_centres, dim, seed=7 + draw) if n_centres else None
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_ref, dim))
    for s in range(-(-n_ref // shard)):
        n = min(shard, n_ref - s * shard)
        out[s * shard : (s + 1) * shard] = _reference_shard(n, dim, s, data, centres, draw)
    out.flush()
    del out


def generations(path: Path, refs: Path, n_gen: int, n_ref: int, dim: int, draw: int = 0):
    """Near-copies of random references (0.6 reference + 0.4 noise), written to `path`."""
    import numpy as np

    mm = np.load(refs, mmap_mode="r")
    src = np.random.default_rng(3 + 100 * draw).integers(0, n_ref, n_gen)
    gen = 0.6 * np.asarray(mm[np.sort(src)]) + 0.4 * descriptors(n_gen, dim, seed=2 + 100 * draw)
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    np.save(path, gen.astype(np.float32))


def _shards(refs: Path, n_ref: int, dim: int, shard: int):
    import numpy as np

    for s in range(-(-n_ref // shard)):
        x = _read_shard(refs, s, shard, n_ref, dim)
        yield np.arange(s * shard, s * shard + len(x)), x


def _sharded(gen, refs, n_ref, dim, k, shard):
    import numpy as np
    import pandas as pd

    from diffrep.websearch import merge_topk, search_shard

    ids = [str(i) for i in range(len(gen))]

    def frames():
        # one shard in memory at a time, as in the workflow's one-shard jobs (a for loop over
        # _shards would still hold the previous shard while reading the next)
        for s in range(-(-n_ref // shard)):
            x = _read_shard(refs, s, shard, n_ref, dim)
            idx = np.arange(s * shard, s * shard + len(x))
            meta = pd.DataFrame({"key": idx, "index": idx, "url": "", "caption": ""})
            frame = search_shard(ids, gen, x, meta, s, k)
            del x, meta
            yield frame

    merged = merge_topk(frames(), k)
    merged = merged.assign(g=merged["generation"].astype(int)).sort_values(["g", "rank"])
    return merged["index"].to_numpy().reshape(len(gen), k), {}


def _monolithic(gen, refs, n_ref, dim, k, shard):
    import faiss

    index = faiss.IndexFlatIP(dim)
    for _, x in _shards(refs, n_ref, dim, shard):
        index.add(x)
    return index.search(gen, k)[1], {}


def _ivfpq(gen, refs, n_ref, dim, k, shard):
    import numpy as np

    from diffrep.approxsearch import add_shards, build_index
    from diffrep.webapprox import candidates, rerank

    t0 = time.perf_counter()
    take = np.sort(np.random.default_rng(0).choice(n_ref, min(n_ref, IVFPQ["train"]), replace=False))
    sample = np.vstack([x[np.isin(idx, take)] for idx, x in _shards(refs, n_ref, dim, shard)])
    index = build_index(sample, "ivfpq", nlist=IVFPQ["nlist"], m=IVFPQ["m"], nbits=IVFPQ["nbits"], seed=0)
    add_shards(index, _shards(refs, n_ref, dim, shard))
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    cand = candidates(index, gen, IVFPQ["candidates"], IVFPQ["nprobe"], 0)
    _, rows = rerank(gen, cand, _shards(refs, n_ref, dim, shard), k)
    return rows, {"build": build, "search": time.perf_counter() - t0}


METHODS = {"sharded": _sharded, "monolithic": _monolithic, "ivfpq": _ivfpq}


def child(method: str, gen_path: str, refs: str, n_ref: int, dim: int, k: int, shard: int, out: str) -> None:
    """One variant in a fresh process; prints a JSON line (seconds, peak_mb, ...) and saves the top-k."""
    import faiss  # noqa: F401  (imported before the baseline: library pages are not counted)
    import numpy as np
    import pandas as pd  # noqa: F401

    import diffrep.approxsearch  # noqa: F401
    import diffrep.webapprox  # noqa: F401
    import diffrep.websearch  # noqa: F401

    set_threads()
    gen = np.load(gen_path)
    base_kb, peak_ok = _rss_kb("VmRSS"), _reset_peak()
    t0 = time.perf_counter()
    rows, extra = METHODS[method](gen, Path(refs), n_ref, dim, k, shard)
    seconds = time.perf_counter() - t0
    peak_kb = _rss_kb("VmHWM") if peak_ok else None
    np.save(out, np.asarray(rows, dtype=np.int64))
    peak_mb = (peak_kb - base_kb) / 1024 if peak_kb else None
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, **extra}))


def _run(method, tmp, n_ref, dim, k, shard):
    import numpy as np

    out = Path(tmp) / f"{method}.npy"
    args = [str(a) for a in (Path(tmp) / "gen.npy", Path(tmp) / "refs.npy", n_ref, dim, k, shard, out)]
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"webscale bench {method} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "rows": np.load(out)}


def bench(
    n_gen: int, n_ref: int, dim: int = 512, k: int = 10, shard: int = 100_000, data: str = "random"
) -> list[dict]:
    """The section's rows: sharded vs monolithic (time, memory), IVF-PQ vs exact (time, memory, recall)."""
    import tempfile

    from diffrep.approxsearch import recall

    size = f"{n_gen // 1000}k gen x {n_ref / 1e6:g}M {data} ref x {dim}-d, top-{k}"
    print(f"webscale ({size}; shards of {shard}; one subprocess per method)", flush=True)
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-webscale-") as tmp:
        t0 = time.perf_counter()
        write_references(Path(tmp) / "refs.npy", n_ref, dim, shard, data)
        generations(Path(tmp) / "gen.npy", Path(tmp) / "refs.npy", n_gen, n_ref, dim)
        print(f"  references written in {time.perf_counter() - t0:.0f} s", flush=True)
        res = {m: _run(m, tmp, n_ref, dim, k, shard) for m in METHODS}
    equal = bool((res["sharded"]["rows"] == res["monolithic"]["rows"]).all())
    r1, r10 = (recall(res["ivfpq"]["rows"], res["monolithic"]["rows"], r) for r in (1, 10))
    shard_mb, result_mb = shard * dim * 4 / 2**20, 2 * n_gen * k * 100 / 2**20
    sharded, mono = "sharded exact (websearch.search_shard + merge_topk)", "one faiss IndexFlatIP"
    ivf = (
        f"IVF-PQ nlist {IVFPQ['nlist']}, m {IVFPQ['m']}, nprobe {IVFPQ['nprobe']}, exact re-ranking of "
        f"{IVFPQ['candidates']} (webapprox)"
    )
    ivf_detail = (
        f"recall@1 {r1:.4f}, recall@10 {r10:.4f} against exact; search + re-ranking (reads every shard "
        f"again) {res['ivfpq']['search']:.1f} s, index build {res['ivfpq']['build']:.1f} s (once per "
        f"collection, trained on {IVFPQ['train']})"
    )
    return [
        row(
            "webscale",
            f"time, {size}",
            res["sharded"]["seconds"],
            res["monolithic"]["seconds"],
            "s",
            sharded,
            mono,
            f"merged top-k equals monolithic: {equal}; shards of {shard}; {THREADS} threads; both read the "
            "references from a file",
        ),
        row(
            "webscale",
            f"peak memory, {size}",
            res["sharded"]["peak_mb"],
            res["monolithic"]["peak_mb"],
            "MB",
            sharded,
            mono,
            f"bound for sharded: one shard {shard_mb:.0f} MB + its result and the running "
            f"top-k {result_mb:.0f} MB (+ its copy in pandas)",
        ),
        row(
            "webscale",
            f"approximate search time, {size}",
            res["ivfpq"]["search"],
            res["monolithic"]["seconds"],
            "s",
            ivf,
            f"{mono} (add + search)",
            ivf_detail,
        ),
        row(
            "webscale",
            f"approximate vs sharded exact time, {size}",
            res["ivfpq"]["search"],
            res["sharded"]["seconds"],
            "s",
            ivf,
            sharded,
            ivf_detail,
        ),
        row(
            "webscale",
            f"approximate peak memory, {size}",
            res["ivfpq"]["peak_mb"],
            res["monolithic"]["peak_mb"],
            "MB",
            ivf,
            mono,
            "index codes 1M x m bytes + one shard; the build's peak included",
        ),
    ]


# The trade-off sweep (`python bench/webscale.py --sweep DATA [--quick] [--hnsw]`): approximate index
# settings against one exact search on the section's data, in one process (no memory measured).
# (nlist, m, nprobes): the section's m 64 at more cells, and m 32 (half the codes to scan per probe)
SWEEP_IVFPQ = [
    (512, 64, (32, 64, 96)),
    (1024, 64, (64, 128)),
    (2048, 64, (64, 128)),
    (1024, 32, (32, 64)),
    (2048, 32, (64, 128)),
]
SWEEP_HNSW = [64, 128, 256]  # efSearch of one IndexHNSWFlat (M 32)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _built(sample, kind, opts, shards):
    from diffrep.approxsearch import add_shards, build_index

    index = build_index(sample, kind, seed=0, **opts)
    add_shards(index, shards)
    return index


def _approx(index, gen, knobs, shards, k, n_candidates: int = IVFPQ["candidates"]):
    """The approximate top-k: the index's ``n_candidates`` candidates re-ranked exactly (the
    approx_search rule's path), and the seconds the index search took of it."""
    from diffrep.webapprox import candidates, rerank

    cand, seconds = _timed(candidates, index, gen, n_candidates, *knobs)
    return rerank(gen, cand, shards, k)[1], seconds


def sweep(
    n_gen: int,
    n_ref: int,
    data: str,
    dim: int = 512,
    k: int = 10,
    shard: int = 100_000,
    hnsw: bool = False,
    draw: int = 0,
    ivfpq=None,
) -> list[dict]:
    """Recall@1 / @10 and search + re-ranking time of each setting, against one exact faiss search
    (IndexFlatIP, add + search) of the same generations; the IVF-PQ settings other than nlist, m and
    nprobe are the section's (IVFPQ), each index built once per (nlist, m) (trained on max(25 600, 40 nlist)
    references, as faiss asks; the build is done before and not timed in the speed-up)."""
    import tempfile

    import numpy as np

    from diffrep.approxsearch import recall

    set_threads()
    out = []
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-sweep-") as tmp:
        refs = Path(tmp) / "refs.npy"
        write_references(refs, n_ref, dim, shard, data, draw)
        generations(Path(tmp) / "gen.npy", refs, n_gen, n_ref, dim, draw)
        gen = np.load(Path(tmp) / "gen.npy")
        (truth, _), exact = _timed(_monolithic, gen, refs, n_ref, dim, k, shard)
        print(f"{data} (draw {draw}): exact search (IndexFlatIP add + search) {exact:.1f} s", flush=True)
        grid = [("ivfpq", nlist, m, nprobes) for nlist, m, nprobes in ivfpq or SWEEP_IVFPQ]
        if hnsw:
            grid.append(("hnsw", None, None, SWEEP_HNSW))
        for kind, nlist, m, knobs in grid:
            opts = dict(nlist=nlist, m=m, nbits=IVFPQ["nbits"]) if kind == "ivfpq" else dict(hnsw_m=32)
            # faiss wants 39 training points per IVF cell: the section's 25 600 for 512 cells, more for more
            n_train = min(n_ref, max(IVFPQ["train"], 40 * (nlist or 0)))
            take = np.sort(np.random.default_rng(0).choice(n_ref, n_train, replace=False))
            sample = np.vstack([x[np.isin(idx, take)] for idx, x in _shards(refs, n_ref, dim, shard)])
            index, build = _timed(_built, sample, kind, opts, _shards(refs, n_ref, dim, shard))
            for knob in knobs:
                nprobe, ef = (knob, 1) if kind == "ivfpq" else (1, knob)
                (rows, in_index), secs = _timed(
                    _approx, index, gen, (nprobe, ef), _shards(refs, n_ref, dim, shard), k
                )
                r1, r10 = recall(rows, truth, 1), recall(rows, truth, 10)
                name = (
                    f"ivfpq nlist {nlist} m {m} nprobe {knob}"
                    if kind == "ivfpq"
                    else f"hnsw M 32 efSearch {knob}"
                )
                print(
                    f"  {name}: recall@1 {r1:.4f} @10 {r10:.4f}, {secs:.1f} s ({exact / secs:.2f}x exact; "
                    f"index search {in_index:.1f} s, the rest re-ranking); build {build:.0f} s",
                    flush=True,
                )
                out.append(
                    {
                        "data": data,
                        "setting": name,
                        "recall1": r1,
                        "recall10": r10,
                        "seconds": secs,
                        "index_seconds": in_index,
                        "exact_seconds": exact,
                        "speedup": exact / secs,
                        "build_seconds": build,
                    }
                )
    return out


# Time against exact at the recall target (`python bench/webscale.py --at-target [DATA ...] [--quick]
# [--target R]`): the workflow's own tuning (diffrep.webapprox.tune_settings, the approx_search rule's)
# chooses nprobe and candidates for recall@1 and recall@10 >= R (0.99) on 1000 held-out generations
# whose exact top-10 is known, then every generation is searched with them and timed against one exact
# search. The index, fixed before the first run: IVF-PQ with nlist the power of two nearest 2 sqrt(N)
# (2048 at 1M, 512 at 50k), m 32, 8 bits, trained on 40 nlist references (faiss's minimum is 39 per
# cell); the tuning starts at the schema's defaults (nprobe 16, 100 candidates) and stops at its
# ceilings (every cell, 3200 candidates).
AT_TARGET = dict(m=32, nbits=8, nprobe=16, candidates=100, max_candidates=3200, recall_queries=1000)


def _at_target_index(refs: Path, n_ref: int, dim: int, shard: int):
    """The AT_TARGET index over the references, built (seeded sample) with every shard added."""
    import math

    import numpy as np

    nlist = 2 ** round(math.log2(2 * math.sqrt(n_ref)))
    take = np.sort(np.random.default_rng(0).choice(n_ref, min(n_ref, 40 * nlist), replace=False))
    sample = np.vstack([x[np.isin(idx, take)] for idx, x in _shards(refs, n_ref, dim, shard)])
    opts = dict(nlist=nlist, m=AT_TARGET["m"], nbits=AT_TARGET["nbits"])
    return _built(sample, "ivfpq", opts, _shards(refs, n_ref, dim, shard)), nlist


def _tuned(index, gen, truth, k: int, target: float):
    """The workflow's tuning of nprobe and candidates on AT_TARGET's held-out sample (seed 0)."""
    from diffrep.webapprox import held_out, tune_settings

    cfg = dict(kind="ivfpq", max_nprobe=None, recall_target=target, **AT_TARGET)
    held = held_out(len(gen), AT_TARGET["recall_queries"], 0)
    return tune_settings(index, gen[held], truth[held], cfg, k)


def at_target(
    n_gen: int, n_ref: int, data: str, dim: int = 512, k: int = 10, shard: int = 100_000, target: float = 0.99
) -> dict:
    """Search time of the approximate index at the settings the recall target chose, against one exact
    search (IndexFlatIP, add + search) of the same generations, with the recall over all of them."""
    import tempfile

    import numpy as np

    from diffrep.approxsearch import recall
    from diffrep.approxtune import describe_trials

    set_threads()
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-target-") as tmp:
        refs = Path(tmp) / "refs.npy"
        write_references(refs, n_ref, dim, shard, data)
        generations(Path(tmp) / "gen.npy", refs, n_gen, n_ref, dim)
        gen = np.load(Path(tmp) / "gen.npy")
        (truth, _), exact = _timed(_monolithic, gen, refs, n_ref, dim, k, shard)
        (index, nlist), build = _timed(_at_target_index, refs, n_ref, dim, shard)
        tuning, tune_seconds = _timed(_tuned, index, gen, truth, k, target)
        c = tuning.chosen
        knobs = (c.breadth, 1)
        (rows, _), secs = _timed(
            _approx, index, gen, knobs, _shards(refs, n_ref, dim, shard), k, c.candidates
        )
    out = {
        "data": data,
        "size": f"{n_gen} gen x {n_ref} ref x {dim}-d, top-{k}, shards of {shard}",
        "index": f"ivfpq nlist {nlist} m {AT_TARGET['m']}",
        "target": target,
        "met": tuning.met,
        "nprobe": c.breadth,
        "candidates": c.candidates,
        "sample_recall1": c.recall_1,
        "sample_recall10": c.recall_k,
        "recall1": recall(rows, truth, 1),
        "recall10": recall(rows, truth, 10),
        "seconds": secs,
        "exact_seconds": exact,
        "speedup": exact / secs,
        "build_seconds": build,
        "tuning_seconds": tune_seconds,
        "settings_tried": describe_trials(tuning, "nprobe", k),
    }
    print(
        f"{data} ({out['size']}; {out['index']}): target {target} {'met' if tuning.met else 'NOT met'} at "
        f"nprobe {c.breadth}, {c.candidates} candidates (held-out recall@1 {c.recall_1:.4f}, @10 "
        f"{c.recall_k:.4f}; all generations {out['recall1']:.4f} / {out['recall10']:.4f}); "
        f"{secs:.1f} s vs exact {exact:.1f} s ({out['speedup']:.2f}x); build {build:.0f} s, tuning "
        f"{tune_seconds:.1f} s; settings tried: {out['settings_tried']}",
        flush=True,
    )
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        method, gen, refs, n_ref, dim, k, shard, out = argv[1:9]
        child(method, gen, refs, int(n_ref), int(dim), int(k), int(shard), out)
        return 0
    if argv[:1] == ["--at-target"]:
        size = _size("--quick" in argv)
        target = float(argv[argv.index("--target") + 1]) if "--target" in argv else 0.99
        results = [
            at_target(**size, data=d, target=target) for d in [a for a in argv if a in DESIGNS] or DESIGNS
        ]
        print(json.dumps(results))
        return 0
    if argv[:1] == ["--sweep"] and len(argv) > 1 and argv[1] in DESIGNS:
        size = _size("--quick" in argv)
        # --draw N: a fresh data set of the same design; --ivfpq NLIST:M:NPROBE (repeatable): these only
        draw = int(argv[argv.index("--draw") + 1]) if "--draw" in argv else 0
        picked: dict[tuple[int, int], list[int]] = {}  # one index per (nlist, m), all its nprobes
        for n, m, p in (argv[i + 1].split(":") for i, a in enumerate(argv) if a == "--ivfpq"):
            picked.setdefault((int(n), int(m)), []).append(int(p))
        ivfpq = [(n, m, tuple(ps)) for (n, m), ps in picked.items()] or None
        sweep(**size, data=argv[1], hnsw="--hnsw" in argv, draw=draw, ivfpq=ivfpq)
        return 0
    raise SystemExit(
        "run it as a section of bench/run.py: bench/run.py --only webscale [--quick]; or the approximate "
        f"index trade-off: bench/webscale.py --sweep {{{','.join(DESIGNS)}}} [--quick] [--hnsw] [--draw N] "
        f"[--ivfpq NLIST:M:NPROBE ...]; or its time at a recall target: bench/webscale.py --at-target "
        f"[{' '.join(DESIGNS)}] [--quick] [--target R]"
    )


def _size(quick: bool) -> dict:
    """The bench's size: 10k generations x 1M references, shards of 100 000 (quick: 1k x 50k, 10 000)."""
    return dict(n_gen=1000, n_ref=50_000, shard=10_000) if quick else dict(n_gen=10_000, n_ref=1_000_000)


if __name__ == "__main__":
    sys.exit(main())

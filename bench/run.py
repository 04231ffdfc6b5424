"""Benchmark of diffrep's costs against the naive or upstream way of doing the same thing.

    .venv/bin/python bench/run.py                 # everything, about 5-8 minutes on 2 cores
    .venv/bin/python bench/run.py --only retrieval,generation
    .venv/bin/python bench/run.py --quick         # small sizes: a smoke test of the script

Every comparison is measured in this one run, on this machine, and printed as a ratio
(naive / diffrep: above 1 means diffrep is cheaper). Results go to bench/results.csv (one row per
measure: section, measure, diffrep value, naive value, unit, ratio, what each side did). Absolute
numbers depend on the machine and its load; the ratios are the point.

Sections:
- retrieval: faiss exact search (diffrep.similarity.build_index + search, IndexFlatIP) vs
  upstream DCR's dense ``torch.mm(train, gen.T)`` + ``topk`` on the same L2-normalised 512-d
  descriptors, each variant in its own subprocess; time and peak resident memory above the
  descriptors themselves (Linux VmHWM after resetting it through /proc/self/clear_refs);
- fid: a matrix of 12 runs, the reference statistics of the training images computed once and
  reused (diffrep's fid_reference rule) vs recomputed inside every run's FID job; Inception
  passes counted (images through the network) and wall time, with diffrep.fid's own functions;
- embeddings: the training-set descriptors computed once (diffrep's embed_train rule) vs per run,
  for 12 runs, with an SSCD-sized TorchScript ResNet-50 (512-d, random weights, upstream
  preprocessing) and with the mini study's pixel descriptor;
- snakemake: DAG build time (`snakemake -n`) of the paper study (config.yaml) and of a matrix
  about 10x larger (datasets replicated), in a fresh copy of the workflow; no-op re-run of the
  micro study after a complete run, vs the complete run;
- generation: images/s of the mini model architecture on CPU, batched (the mini profile's
  generate_batch_size) vs one image at a time, with diffrep.generation.generate_batch;
- app: `python -m diffrep.app` on a completed study (results/mini when it exists, else the micro
  study): start time (process start to the page served), and a try-a-prompt request answered with
  the model and the faiss index cached (the app's way) vs the first request, which loads both
  (what a per-request load would cost every time; `--no-warmup`, so that nothing is preloaded);
- numerics: portable numerics (diffrep.numerics: AVX2 kernels, fixed threads) against native (this
  CPU's own kernels): a finetuning loop of the mini's UNet size (AdamW, batch 16) in fresh processes,
  and a whole study's Snakemake run (the micro study, or the mini's with `--numerics-study mini`),
  each run in both modes one after the other; ratio native / portable (below 1: portable is slower);
- webscale: the web-scale search at 1M references (10k generations) (bench/webscale.py): sharded exact search vs one
  faiss index (time, peak memory, equality of the top-k), IVF-PQ with exact re-ranking vs exact
  (time, peak memory, recall@1 / @10).

`--only` runs some sections: their rows in bench/results.csv are replaced, the other sections' rows
are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

SECTIONS = ("retrieval", "fid", "embeddings", "snakemake", "generation", "app", "numerics", "webscale")
COLUMNS = ("section", "measure", "diffrep", "naive", "unit", "ratio", "diffrep_how", "naive_how", "detail")
THREADS = 2


# ---------------------------------------------------------------- helpers


def row(section, measure, diffrep, naive, unit, diffrep_how, naive_how, detail="", higher_is_better=False):
    """One result row; ratio = naive / diffrep (or diffrep / naive for rates), > 1 = diffrep better."""
    if diffrep is None or naive is None:
        ratio = None
    elif higher_is_better:
        ratio = diffrep / naive if naive else None
    else:
        ratio = naive / diffrep if diffrep else None
    r = dict(
        section=section,
        measure=measure,
        diffrep=_round(diffrep),
        naive=_round(naive),
        unit=unit,
        ratio=_round(ratio),
        diffrep_how=diffrep_how,
        naive_how=naive_how,
        detail=detail,
    )
    print(
        f"  {measure}: diffrep {r['diffrep']} vs naive {r['naive']} {unit} -> ratio {r['ratio']}", flush=True
    )
    return r


def _round(x):
    if x is None:
        return None
    if isinstance(x, int):
        return x
    return float(f"{x:.4g}")


def _rss_kb(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM) in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def timer():
    t = {"s": None}
    t0 = time.perf_counter()
    yield t
    t["s"] = time.perf_counter() - t0


def set_threads(n: int = THREADS) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


# ---------------------------------------------------------------- retrieval


def descriptors(n: int, d: int, seed: int):
    """n × d float32 L2-normalised random descriptors (seeded)."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def retrieval_child(method: str, n_gen: int, n_train: int, dim: int, k: int, out: str) -> None:
    """Run one retrieval variant in this (fresh) process; print a JSON line with time and memory."""
    import numpy as np
    import torch

    set_threads()
    train = descriptors(n_train, dim, seed=1)
    # generations: near-copies of random training images plus noise, like a replicating model
    gen = descriptors(n_gen, dim, seed=2)
    src = np.random.default_rng(3).integers(0, n_train, n_gen)
    gen = 0.6 * train[src] + 0.4 * gen
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    import faiss  # noqa: F401  (imported before the baseline so library pages are not counted)

    base_kb = _rss_kb("VmRSS")
    peak_ok = _reset_peak()
    t0 = time.perf_counter()
    if method == "faiss":
        from diffrep.similarity import build_index, search

        idx = build_index(train, "exact")
        sims, rows = search(idx, gen, k)
        top1 = rows[:, 0]
    elif method == "torch":
        # upstream diff_retrieval.py: sim = torch.mm(values, query.T); simscores = sim.T; topk
        with torch.no_grad():
            sim = torch.mm(torch.from_numpy(train), torch.from_numpy(gen).T)
            vals, rows = sim.T.topk(k, dim=1, largest=True)
        top1 = rows[:, 0].numpy()
    else:
        raise ValueError(f"unknown retrieval method {method!r}")
    seconds = time.perf_counter() - t0
    peak_kb = _rss_kb("VmHWM") if peak_ok else None
    np.save(out, np.asarray(top1, dtype=np.int64))
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": (peak_kb - base_kb) / 1024 if peak_kb else None,
                "recall_source": float(np.mean(np.asarray(top1) == src)),
            }
        )
    )


def bench_retrieval(sizes, dim=512, k=10):
    import numpy as np

    rows = []
    print("retrieval (faiss IndexFlatIP vs torch.mm + topk, one subprocess per variant)", flush=True)
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        for n_gen, n_train in sizes:
            res = {}
            for method in ("faiss", "torch"):
                out = Path(tmp) / f"{method}-{n_gen}.npy"
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        "retrieval",
                        method,
                        str(n_gen),
                        str(n_train),
                        str(dim),
                        str(k),
                        str(out),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
                )
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"retrieval child {method} {n_gen}x{n_train} failed:\n{proc.stderr[-3000:]}"
                    )
                res[method] = json.loads(proc.stdout.strip().splitlines()[-1])
                res[method]["top1"] = np.load(out)
            agree = float(np.mean(res["faiss"]["top1"] == res["torch"]["top1"]))
            size = f"{n_gen // 1000}k gen x {n_train // 1000}k train x {dim}-d, top-{k}"
            detail = f"top-1 agreement {agree:.4f}; {THREADS} threads"
            rows.append(
                row(
                    "retrieval",
                    f"time, {size}",
                    res["faiss"]["seconds"],
                    res["torch"]["seconds"],
                    "s",
                    "faiss IndexFlatIP (diffrep.similarity)",
                    "torch.mm(train, gen.T) + topk (upstream DCR)",
                    detail,
                )
            )
            rows.append(
                row(
                    "retrieval",
                    f"peak memory, {size}",
                    res["faiss"]["peak_mb"],
                    res["torch"]["peak_mb"],
                    "MB",
                    "faiss IndexFlatIP (diffrep.similarity)",
                    "torch.mm(train, gen.T) + topk (upstream DCR)",
                    "resident memory above the descriptors (VmHWM - VmRSS before search)",
                )
            )
    return rows


# ---------------------------------------------------------------- FID and embeddings fixtures


def write_images(folder: Path, n: int, size: int, seed: int, prefix: str = "") -> list[str]:
    """n random-blob RGB PNGs of size × size px; returns file names."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        name = f"{prefix}{i:05d}.png"
        img.save(folder / name)
        names.append(name)
    return names


def make_training_set(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """A training set as prepare_dataset writes it: images/ and metadata.parquet (id, file)."""
    import pandas as pd

    names = write_images(root / "images", n, size, seed=0, prefix="train")
    pd.DataFrame({"id": [Path(f).stem for f in names], "file": names}).to_parquet(root / "metadata.parquet")
    return root / "images", root / "metadata.parquet"


def make_generation_dirs(root: Path, n_runs: int, n_gen: int, size: int) -> list[Path]:
    dirs = []
    for r in range(n_runs):
        d = root / f"run{r:02d}"
        write_images(d, n_gen, size, seed=100 + r)
        dirs.append(d)
    return dirs


@contextlib.contextmanager
def count_calls(module, name: str, counter: dict, size_of):
    """Wrap module.name to add size_of(args) to counter['n'] on every call."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        counter["n"] += size_of(args, kwargs)
        return original(*args, **kwargs)

    setattr(module, name, wrapped)
    try:
        yield
    finally:
        setattr(module, name, original)


# ---------------------------------------------------------------- FID


def bench_fid(n_runs: int, n_ref: int, n_gen: int, size: int = 32):
    from safetensors.torch import save_file

    from diffrep import fid

    set_threads()
    print(f"fid ({n_runs} runs, {n_ref} reference images, {n_gen} generations per run)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        tmp = Path(tmp)
        model = tmp / "fid_inception"
        model.mkdir()
        save_file(fid.random_inception_state_dict(0), str(model / "inception.safetensors"))
        images, metadata = make_training_set(tmp / "data", n_ref, size)
        gens = make_generation_dirs(tmp / "gen", n_runs, n_gen, size)
        passes = {"n": 0}
        with count_calls(fid, "activations", passes, lambda a, kw: len(a[0])):
            # diffrep: the fid_reference rule once, then one fid job per run reading it
            passes["n"] = 0
            with timer() as t_reuse:
                ref = tmp / "reference.npz"
                fid.reference_statistics(images, metadata, model, ref, size, device="cpu")
                reused = [
                    fid.fid_of_generations(g, ref, model, tmp / f"reuse-{g.name}.json", size, device="cpu")
                    for g in gens
                ]
            n_reuse = passes["n"]
            # naive: every run's FID job recomputes the training statistics
            passes["n"] = 0
            with timer() as t_naive:
                naive = []
                for g in gens:
                    ref_g = tmp / f"reference-{g.name}.npz"
                    fid.reference_statistics(images, metadata, model, ref_g, size, device="cpu")
                    naive.append(
                        fid.fid_of_generations(
                            g, ref_g, model, tmp / f"naive-{g.name}.json", size, device="cpu"
                        )
                    )
            n_naive = passes["n"]
    same = max(abs(a["fid"] - b["fid"]) for a, b in zip(reused, naive))
    how_d = "reference statistics once (fid_reference rule), reused by every fid job"
    how_n = "reference statistics recomputed in every run's fid job"
    paper = n_runs * (10000 + 4000) / (10000 + n_runs * 4000)
    rows.append(
        row(
            "fid",
            f"Inception passes (images), {n_runs} runs",
            n_reuse,
            n_naive,
            "images",
            how_d,
            how_n,
            f"{n_ref} reference + {n_gen} generated per run at {size} px; the same count at paper scale "
            f"(10k reference, 4000 per run) gives {paper:.2f}x",
        )
    )
    rows.append(
        row(
            "fid",
            f"wall time, {n_runs} runs",
            t_reuse["s"],
            t_naive["s"],
            "s",
            how_d,
            how_n,
            f"max |FID difference| between the two ways {same:.2e}; InceptionV3 random weights, "
            f"{THREADS} threads",
        )
    )
    return rows


# ---------------------------------------------------------------- embeddings


def sscd_like_model(folder: Path) -> Path:
    """An SSCD-sized TorchScript model (ResNet-50 trunk, 512-d head: sscd_disc_mixup's shape), random weights."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None, num_classes=512).eval()
    path = folder / "sscd_like.torchscript.pt"
    torch.jit.script(net).save(str(path))
    return folder


def bench_embeddings(n_runs: int, n_train: int, n_gen: int, size: int = 64):
    from diffrep import embeddings

    set_threads()
    print(f"embeddings ({n_runs} runs, {n_train} training images, {n_gen} generations per run)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        tmp = Path(tmp)
        images, metadata = make_training_set(tmp / "data", n_train, size)
        gens = make_generation_dirs(tmp / "gen", n_runs, n_gen, size)
        sscd_dir = sscd_like_model(tmp / "sscd")
        variants = [
            (
                "SSCD-sized ResNet-50 TorchScript, upstream preprocessing",
                {"type": "sscd", "model": "sscd_like", "preprocess": "upstream"},
                sscd_dir,
            ),
            ("pixel descriptor (mini study), size 16", {"type": "pixel", "size": 16}, None),
        ]
        for label, cfg, model_dir in variants:
            passes = {"n": 0}
            with count_calls(embeddings, "run_batched", passes, lambda a, kw: len(a[0])):
                passes["n"] = 0
                with timer() as t_once:
                    train_out = tmp / "train.npz"
                    embeddings.embed_to_file(
                        cfg,
                        train_out,
                        images_dir=images,
                        metadata=metadata,
                        model_dir=model_dir,
                        device="cpu",
                    )
                    for g in gens:
                        embeddings.embed_to_file(
                            cfg, tmp / f"once-{g.name}.npz", generations=g, model_dir=model_dir, device="cpu"
                        )
                n_once = passes["n"]
                passes["n"] = 0
                with timer() as t_per_run:
                    for g in gens:
                        embeddings.embed_to_file(
                            cfg,
                            tmp / f"train-{g.name}.npz",
                            images_dir=images,
                            metadata=metadata,
                            model_dir=model_dir,
                            device="cpu",
                        )
                        embeddings.embed_to_file(
                            cfg, tmp / f"per-{g.name}.npz", generations=g, model_dir=model_dir, device="cpu"
                        )
                n_per_run = passes["n"]
            how_d = "training set embedded once (embed_train rule), generations per run"
            how_n = "training set re-embedded with every run's generations"
            rows.append(
                row(
                    "embeddings",
                    f"images embedded, {n_runs} runs, {label.split(',')[0]}",
                    n_once,
                    n_per_run,
                    "images",
                    how_d,
                    how_n,
                    f"{n_train} training + {n_gen} generated per run",
                )
            )
            rows.append(
                row(
                    "embeddings",
                    f"wall time, {n_runs} runs, {label}",
                    t_once["s"],
                    t_per_run["s"],
                    "s",
                    how_d,
                    how_n,
                    f"{size} px images, {THREADS} threads",
                )
            )
    return rows


# ---------------------------------------------------------------- snakemake


def _snakemake(args, cwd, timeout=1800, env=None):
    with timer() as t:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"snakemake {' '.join(args)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc, t["s"]


def total_jobs(stdout: str) -> int:
    m = re.search(r"^total\s+(\d+)", stdout, re.M)
    return int(m.group(1)) if m else 0


def larger_config(config: dict, factor: int) -> dict:
    """The paper config with every dataset replicated ``factor`` times (same source, new names).

    Every experiment block and sweep then covers ``factor`` times as many (dataset, run) pairs, so
    the job count grows about ``factor``-fold (model downloads are shared and do not grow).
    """
    import copy

    big = copy.deepcopy(config)
    big["datasets"] = {
        f"{name}_{i:02d}": copy.deepcopy(ds) for name, ds in config["datasets"].items() for i in range(factor)
    }
    for block in big["experiments"]:
        block["datasets"] = [f"{d}_{i:02d}" for d in block["datasets"] for i in range(factor)]
    for sweep in big.get("sweeps", {}).values():
        sweep["dataset"] = f"{sweep['dataset']}_00"
    return big


def bench_snakemake(factor: int, micro: bool, micro_dir: Path | None):
    import yaml

    from conftest import MICRO, copy_workflow

    rows = []
    print("snakemake (dry runs of the paper study and a larger matrix; micro study no-op re-run)", flush=True)
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        wf = copy_workflow(Path(tmp) / "wf")
        paper, t_paper = _snakemake(["-n"], wf)
        cfg = yaml.safe_load((wf / "config.yaml").read_text())
        (wf / "big.yaml").write_text(yaml.safe_dump(larger_config(cfg, factor)))
        big, t_big = _snakemake(["-n", "--configfile", "big.yaml", "--replace-workflow-config"], wf)
        j_paper, j_big = total_jobs(paper.stdout), total_jobs(big.stdout)
        rows.append(
            row(
                "snakemake",
                "dry-run jobs, paper matrix vs larger matrix",
                j_paper,
                j_big,
                "jobs",
                "config.yaml (paper study)",
                f"paper config with datasets x{factor}",
                "job count of `snakemake -n` (the size of the planned DAG)",
                higher_is_better=False,
            )
        )
        rows.append(
            row(
                "snakemake",
                "dry-run (DAG build) time, paper matrix vs larger matrix",
                t_paper,
                t_big,
                "s",
                f"`snakemake -n`, {j_paper} jobs",
                f"`snakemake -n`, {j_big} jobs",
                f"ms per job: {1000 * t_paper / max(j_paper, 1):.1f} (paper) vs "
                f"{1000 * t_big / max(j_big, 1):.1f} (larger); ratio ~ job ratio means linear growth",
            )
        )
        if not micro:
            print("  no-op re-run: skipped (--no-micro)", flush=True)
            return rows
        try:
            if micro_dir is None:
                mwf = copy_workflow(Path(tmp) / "micro")
                _, t_full = _snakemake(["--cores", "2", *MICRO], mwf, timeout=1500)
                full_how = "complete micro study run (`--cores 2`)"
            else:
                mwf, t_full, full_how = micro_dir, None, "(complete run not timed: --micro-dir given)"
            noop, t_noop = _snakemake(["--cores", "2", *MICRO], mwf)
            if "Nothing to be done" not in noop.stdout + noop.stderr:
                raise RuntimeError(f"the re-run of the micro study did something:\n{noop.stderr[-2000:]}")
            dry, t_dry = _snakemake(["-n", *MICRO], mwf)
        except RuntimeError as err:
            print(
                f"  no-op re-run: skipped, the micro study does not run end to end yet ({str(err)[:300]})",
                flush=True,
            )
            rows.append(
                row(
                    "snakemake",
                    "no-op re-run of the micro study",
                    None,
                    None,
                    "s",
                    "re-run after a complete run",
                    full_how,
                    "skipped: micro study failed",
                )
            )
            return rows
        rows.append(
            row(
                "snakemake",
                "no-op re-run of the micro study vs the complete run",
                t_noop,
                t_full,
                "s",
                "same command again after a complete run (`Nothing to be done`)",
                full_how,
                f"dry run of the complete study: {t_dry:.2f} s",
            )
        )
    return rows


# ---------------------------------------------------------------- numerics


def finetune_child(steps: int) -> None:
    """AdamW steps of a UNet of the mini's size (blocks 32/64, 4x8x8 latents, batch 16), one thread;
    print a JSON line with the CPU seconds of the loop (this process's: less sensitive to other
    work on the machine than wall time) and the final weights' sha256 prefix."""
    import hashlib

    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=8,
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    x, text = torch.randn(16, 4, 8, 8), torch.randn(16, 8, 32)
    t = torch.randint(0, 1000, (16,))
    t0 = time.process_time()
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(unet(x, t, text).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.process_time() - t0
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in unet.parameters())).hexdigest()
    print(json.dumps({"s": seconds, "weights": digest[:12]}))


def _finetune_run(mode: str, steps: int) -> dict:
    from diffrep import numerics

    proc = subprocess.run(
        [sys.executable, __file__, "--child", "finetune", str(steps)],
        env=numerics.process_environment({"mode": mode}),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _study_run(mode: str, study: str, tmp: Path) -> float:
    """Seconds of a complete Snakemake run of `study` (micro or mini) in a fresh copy, in `mode`."""
    import yaml

    from conftest import copy_workflow

    wf = copy_workflow(tmp / f"{study}-{mode}")
    src = "tests/micro/config.yaml" if study == "micro" else "profiles/mini/study.yaml"
    config = yaml.safe_load((wf / src).read_text())
    config["numerics"] = {**config.get("numerics", {}), "mode": mode}
    (wf / "bench-numerics.yaml").write_text(yaml.safe_dump(config))
    args = ["--configfile", "bench-numerics.yaml", "--replace-workflow-config"]
    args = (["--profile", "profiles/mini"] if study == "mini" else ["--cores", "2"]) + args
    # native: without the portable pins that conftest (imported above) put into this process
    from diffrep import numerics

    _, seconds = _snakemake(args, wf, timeout=3600, env=numerics.process_environment({"mode": mode}))
    return seconds


def bench_numerics(steps: int, study: str | None):
    print(f"numerics (portable vs native: a {steps}-step finetuning loop; the {study} study)", flush=True)
    runs = {"native": [], "portable": []}
    for _ in range(3):  # alternating, so that a change of the machine's load hits both modes alike
        for mode in runs:
            runs[mode].append(_finetune_run(mode, steps))
    best = {mode: min(r["s"] for r in rs) for mode, rs in runs.items()}
    same = {mode: len({r["weights"] for r in rs}) == 1 for mode, rs in runs.items()}
    rows = [
        row(
            "numerics",
            f"finetuning loop, {steps} AdamW steps, mini-size UNet, batch 16, 1 thread",
            best["portable"],
            best["native"],
            "CPU s",
            "portable (AVX2 kernels: diffrep.numerics)",
            "native (this CPU's kernels)",
            f"best of 3 each, alternating; the same weights within each mode: {same}",
        )
    ]
    if study:
        with tempfile.TemporaryDirectory(prefix="diffrep-bench-numerics-") as tmp:
            seconds = {mode: _study_run(mode, study, Path(tmp)) for mode in ("native", "portable")}
        rows.append(
            row(
                "numerics",
                f"the {study} study's Snakemake run, from nothing",
                seconds["portable"],
                seconds["native"],
                "s",
                "numerics portable",
                "numerics native",
                "one run each, native first, in fresh copies",
            )
        )
    return rows


# ---------------------------------------------------------------- generation


def bench_generation(n_images: int, batch: int, steps: int = 20, resolution: int = 32):
    import numpy as np

    from diffrep import generation, tinysd

    set_threads()
    print(
        f"generation ({n_images} images, mini architecture, {steps} DDIM steps, batch {batch} vs 1)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        captions = [f"a red circle number {i}" for i in range(50)]
        model = tinysd.build_tiny_pipeline(
            Path(tmp) / "model", captions, seed=0, resolution=resolution, prediction_type="v_prediction"
        )
        pipe = generation.load_pipeline(model, "cpu", generation.resolve_dtype("fp32", "cpu"))
        preset = {"steps": steps, "guidance_scale": 3.0}
        prompts = [captions[i % len(captions)] for i in range(n_images)]
        seeds = [generation.image_seed(0, i) for i in range(n_images)]
        generation.generate_batch(pipe, prompts[:1], seeds[:1], preset, resolution, "cpu")  # warm-up
        out = {}
        for b in (batch, 1):
            with timer() as t:
                imgs = []
                for s in range(0, n_images, b):
                    imgs += generation.generate_batch(
                        pipe, prompts[s : s + b], seeds[s : s + b], preset, resolution, "cpu"
                    )
            out[b] = (t["s"], np.stack([np.asarray(im, dtype=np.int16) for im in imgs]))
    diff = int(np.abs(out[batch][1] - out[1][1]).max())
    return [
        row(
            "generation",
            f"images/s, mini architecture, {resolution} px, {steps} steps",
            n_images / out[batch][0],
            n_images / out[1][0],
            "images/s",
            f"batches of {batch} (diffrep.generation.generate_batch)",
            "one image at a time",
            f"max pixel difference batched vs single {diff} (of 255); "
            f"{THREADS} threads; random weights, architecture of mini_sd",
            higher_is_better=True,
        )
    ]


# ---------------------------------------------------------------- app


def app_study(app_dir: Path | None, study: str | None, micro_dir: Path | None, tmp: str) -> tuple[Path, str]:
    """(workflow folder, study) to serve: the given one, results/mini of this checkout, or a micro run."""
    from conftest import MICRO, copy_workflow

    if app_dir is not None:
        return app_dir, study or "mini"
    if (REPO / "results/mini/tables/summary.csv").is_file():
        return REPO, "mini"
    if micro_dir is not None:
        return micro_dir, "micro"
    wf = copy_workflow(Path(tmp) / "micro")
    proc, _ = _snakemake(["--cores", "2", *MICRO], wf, timeout=1500)
    if proc.returncode != 0:
        raise RuntimeError(f"the micro study failed:\n{proc.stderr[-2000:]}")
    return wf, "micro"


def _try_request(url: str, study_dir: Path) -> tuple[float, str]:
    """(seconds, response) of one try-a-prompt request on a finetuned run of the study."""
    import pandas as pd

    from app_server import get

    runs = sorted(p.parent.name for p in study_dir.glob("*/models/*/model_index.json"))
    gens = sorted(study_dir.glob(f"*/generations/{runs[0]}/*/prompts.parquet"))
    prompt = str(pd.read_parquet(gens[0])["prompt"].iloc[0])
    body = {
        "dataset": gens[0].parents[3].name,
        "run": runs[0],
        "preset": gens[0].parent.name,
        "embedder": sorted(p.name for p in (gens[0].parents[3] / "embeddings").iterdir())[0],
        "seed": "3",
        "prompt": prompt,
    }
    with timer() as t:
        status, text = get(url + "/api/try", json.dumps(body).encode())
    if status != 200 or "try-matches" not in text:
        raise RuntimeError(f"try-a-prompt failed ({status}): {text[:500]}")
    return t["s"], f"run {runs[0]}, preset {body['preset']}, prompt {prompt!r}"


def bench_app(app_dir: Path | None, study: str | None, micro_dir: Path | None):
    from app_server import free_port, get

    print("app (start time; try-a-prompt with the model and index cached vs loaded)", flush=True)
    with tempfile.TemporaryDirectory(prefix="diffrep-bench-") as tmp:
        wf, study = app_study(app_dir, study, micro_dir, tmp)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "diffrep.app",
                "--study",
                study,
                "--port",
                str(port),
                "--cache",
                str(Path(tmp) / "cache"),
                "--no-warmup",
            ],
            cwd=wf,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                with contextlib.suppress(OSError):
                    if get(url + "/")[0] == 200:
                        break
                if proc.poll() is not None or time.perf_counter() - t0 > 120:
                    raise RuntimeError(
                        f"the app did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
                    )
                time.sleep(0.05)
            t_start = time.perf_counter() - t0
            t_cold, how = _try_request(url, wf / "results" / study)
            t_warm, _ = _try_request(url, wf / "results" / study)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return [
        row(
            "app",
            f"start time, {study} study (process start to page served)",
            t_start,
            None,
            "s",
            "`python -m diffrep.app`",
            "-",
            "the issue asks for < 10 s on the mini study",
        ),
        row(
            "app",
            f"try-a-prompt request, {study} study",
            t_warm,
            t_cold,
            "s",
            "model and faiss index cached (second request)",
            "first request: loads the model and the index",
            f"{how}; the issue asks for < 5 s on the 2-core machine",
        ),
    ]


# ---------------------------------------------------------------- main


def print_table(rows) -> None:
    print("\n" + "=" * 100)
    print(f"{'section':<11} {'measure':<62} {'diffrep':>10} {'naive':>10} {'ratio':>7}")
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        print(
            f"{r['section']:<11} {r['measure'][:62]:<62} {fmt(r['diffrep']):>10} {fmt(r['naive']):>10} "
            f"{fmt(r['ratio']):>7}"
        )
    print(
        "ratio = naive / diffrep (images/s: diffrep / naive); > 1 means the diffrep way is cheaper or faster"
    )


def write_csv(rows, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    order = {name: i for i, name in enumerate(SECTIONS)}
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: order.get(r["section"], len(order))))
    os.replace(tmp, path)


def kept_rows(path: Path, sections) -> list[dict]:
    """The rows of `path` from sections not in `sections` (kept when only some sections run)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["section"] not in set(sections)]


def bench_webscale(quick: bool):
    import webscale

    size = dict(n_gen=1000, n_ref=50_000, shard=10_000) if quick else dict(n_gen=10_000, n_ref=1_000_000)
    return [r for data in webscale.DATA for r in webscale.bench(**size, data=data)]


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:2] == ["--child", "finetune"]:
        finetune_child(int(argv[2]))
        return 0
    if argv[:2] == ["--child", "retrieval"]:
        method, n_gen, n_train, dim, k, out = argv[2:8]
        retrieval_child(method, int(n_gen), int(n_train), int(dim), int(k), out)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test of the script)")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results.csv")
    ap.add_argument("--no-micro", action="store_true", help="skip the micro study run (no-op re-run time)")
    ap.add_argument("--micro-dir", type=Path, help="a completed micro study copy to time the no-op re-run in")
    ap.add_argument("--app-dir", type=Path, help="app section: a workflow folder with a completed study")
    ap.add_argument("--app-study", help="app section: the study of --app-dir (default mini)")
    ap.add_argument(
        "--numerics-study",
        default="micro",
        help="numerics section: the study run in both modes (micro, mini, none)",
    )
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    q = args.quick
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    sections = {
        "retrieval": lambda: bench_retrieval(
            [(1000, 1000), (5000, 1000)] if q else [(10_000, 10_000), (100_000, 10_000)]
        ),
        "fid": lambda: bench_fid(n_runs=12, n_ref=4 if q else 8, n_gen=2 if q else 4),
        "embeddings": lambda: bench_embeddings(n_runs=12, n_train=4 if q else 16, n_gen=2 if q else 8),
        "snakemake": lambda: bench_snakemake(
            factor=2 if q else 10, micro=not (q or args.no_micro), micro_dir=args.micro_dir
        ),
        "generation": lambda: bench_generation(
            n_images=4 if q else 16, batch=4 if q else 16, steps=4 if q else 20
        ),
        "app": lambda: bench_app(args.app_dir, args.app_study, args.micro_dir),
        "numerics": lambda: bench_numerics(
            steps=10 if q else 60, study=None if q or args.numerics_study == "none" else args.numerics_study
        ),
        "webscale": lambda: bench_webscale(q),
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    rows, kept = [], kept_rows(args.out, only)
    for name in SECTIONS:
        if name in only:
            rows += sections[name]()
            write_csv(kept + rows, args.out)  # after every section: an interrupted run keeps what it measured
    print(f"load average at end: {os.getloadavg()[0]:.1f}", flush=True)
    print_table(rows)
    write_csv(kept + rows, args.out)
    print(f"\nwrote {args.out} ({len(rows)} rows) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

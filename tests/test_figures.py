"""Figures from synthetic tables and images; report captions; figures never re-run upstream jobs."""

import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from diffrep import figures as F
from diffrep.similarity import SimilarityError
from diffrep.tables import write_tables
from test_tables import DS, EMB, RUNS, make_study

STYLE = {"style": "whitegrid", "context": "paper", "dpi": 60}


def _texts(fig) -> str:
    """Every text of a figure: suptitle, titles, axis labels, notes, tick labels, legends."""
    out = []
    for t in fig.findobj(match=lambda a: hasattr(a, "get_text")):
        out.append(t.get_text())
    return "\n".join(out)


def _tables(st):
    write_tables(st["inputs"], st["outputs"], st["params"])
    return st["outputs"]["summary"], st["outputs"]["baselines"]


def _draw(name, st, summary, baselines):
    """Draw summary figure `name` from a synthetic study's files, as the summary_figure rule does."""
    inputs = st["inputs"]
    return F.summary_figure(
        name,
        summary,
        baselines,
        inputs["matches"],
        inputs["baseline_matches"],
        inputs["plans"],
        st["plan_ids"],
        STYLE,
        "mini",
    )


@pytest.mark.parametrize("name", F.SUMMARY_FIGURES)
def test_summary_figures_draw_and_save(tmp_path, name):
    st = make_study(tmp_path, presets=("default", "rand_word_add"))
    summary, baselines = _tables(st)
    fig = _draw(name, st, summary, baselines)
    text = _texts(fig)
    assert "mini study" in text and "not the paper's numbers" in text
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    F.save_figure(fig, png, pdf, dpi=60)
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_main_comparison_names_settings_and_reference_lines(tmp_path):
    st = make_study(tmp_path)
    summary, baselines = _tables(st)
    fig = F.summary_figure("sim95_by_dup_cond", summary, baselines, style=STYLE, study="mini")
    text = _texts(fig)
    for word in (
        "nodup",
        "dup_both",
        "instancelevel_blip",
        "base model",
        "train vs train",
        "conditioning",
        "95th percentile of top-1 similarity",
    ):
        assert word in text
    assert "not in this study: nolevel, classlevel, instancelevel_random" in text
    ax = fig.axes[0]
    s = pd.read_csv(summary)
    base_p95 = s[s["run"] == "base"]["p95"].iloc[0]
    assert any(abs(line.get_ydata()[0] - base_p95) < 1e-9 for line in ax.lines)


def test_mitigation_tradeoff_says_clipscore_was_skipped(tmp_path):
    st = make_study(tmp_path, presets=("default", "rand_word_add"))
    summary, baselines = _tables(st)
    text = _texts(F.summary_figure("mitigation_tradeoff", summary, baselines, style=STYLE, study="mini"))
    assert "CLIP score skipped in the config" in text
    for word in ("train: allcaps", "inference: rand_word_add", "no mitigation", "FID"):
        assert word in text


@pytest.mark.parametrize(
    "runs, presets, expect",
    [
        (["base"], ("default",), "no finetuned run without mitigation"),  # a single run
        (
            ["base", "nodup.instancelevel_blip.none"],
            ("default",),
            "no train-time or inference-time mitigation",
        ),
        (
            ["nodup.classlevel.none"],
            ("default",),
            "no train-time or inference-time mitigation",
        ),  # no blip runs
    ],
)
def test_a_study_without_a_setting_gets_a_note_not_a_crash(tmp_path, runs, presets, expect):
    st = make_study(tmp_path, runs=runs, presets=presets, fid=False)
    summary, baselines = _tables(st)
    texts = ""
    for name in F.SUMMARY_FIGURES:
        fig = _draw(name, st, summary, baselines)
        texts += _texts(fig)
    assert expect in texts


def test_replication_counts_use_the_plan():
    matches = pd.DataFrame(
        {
            "generation": ["a", "b", "c"],
            "rank": [0, 0, 0],
            "train_id": ["x", "x", "y"],
            "similarity": [0.9, 0.8, 0.7],
            "source_id": ["x", "x", "z"],
            "duplicated": [True, True, False],
            "is_source": [True, True, False],
        }
    )
    plan = pd.DataFrame({"id": ["x", "y", "z"], "duplicated": [True, False, False]})
    rc = F.replication_counts(matches, plan).set_index("train_id")
    assert rc.loc["x", "count"] == 2 and rc.loc["z", "count"] == 0 and bool(rc.loc["x", "duplicated"])
    # a nodup plan: nothing duplicated, the study's duplicated set still marks x (the control)
    nodup = plan.assign(duplicated=False, dup_set=[True, False, False])
    assert F.replication_counts(matches, nodup).set_index("train_id")["duplicated"].tolist() == [
        True,
        False,
        False,
    ]


def test_figures_read_what_each_file_says_it_is(tmp_path):
    st = make_study(tmp_path)
    matches = F.read_matches(st["inputs"]["matches"])
    assert sorted(matches) == sorted((DS, EMB, run, "default") for run in RUNS)
    assert set(F.read_baseline_matches(st["inputs"]["baseline_matches"])) == {(DS, EMB)}
    plans = F.read_plans(st["inputs"]["plans"], st["plan_ids"])
    assert set(plans) == {(DS, run) for run in RUNS}  # the base model's plan is the nodup plan
    assert (
        not plans[(DS, "base")]["duplicated"].any()
        and plans[(DS, "dup_both.instancelevel_blip.none")]["duplicated"].any()
    )
    old = st["inputs"]["matches"][0]
    pd.read_parquet(old).drop(columns=["run"]).to_parquet(old)
    with pytest.raises(SimilarityError, match="does not say its run.*snakemake --forcerun retrieve"):
        F.read_matches([old])


def test_summary_figure_names_are_the_schemas():
    from conftest import load_yaml

    schema = load_yaml(REPO / "schemas/config.schema.yaml")
    per_figure = schema["properties"]["figures"]["properties"]["per_figure"]
    assert tuple(per_figure["propertyNames"]["enum"]) == F.SUMMARY_FIGURES
    assert all(name in per_figure["description"] for name in F.SUMMARY_FIGURES)


def test_gallery_orders_by_similarity_and_shows_values(tmp_path):
    st = make_study(tmp_path, runs=["base"], images=True)
    m = pd.read_parquet(st["inputs"]["matches"][0])
    gen_dir = st["R"] / DS / "generations/base/default"
    meta = pd.read_parquet(tmp_path / f"resources/data/{DS}/metadata.parquet")
    fig = F.gallery(
        m, gen_dir, tmp_path / f"resources/data/{DS}/images", meta, "mini", "Match gallery", size=4, top_k=2
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("match 1:")]
    shown = [float(re.search(r"match 1: ([0-9.]+)", t).group(1)) for t in titles]
    best = sorted(m[m["rank"] == 0]["similarity"], reverse=True)[:4]
    assert shown == pytest.approx(best, abs=1e-3)
    assert "mini study" in _texts(fig)


def test_weightdiff_histograms_count_uncompared_tensors(tmp_path):
    st = make_study(tmp_path, runs=["nodup.instancelevel_blip.none"])
    fig = F.weightdiff_histograms(
        pd.read_parquet(st["inputs"]["weightdiff"][0]), STYLE, "mini", "UNet weight change"
    )
    text = _texts(fig)
    assert "1 tensor(s) not compared" in text and "relative L2 change" in text and "mini study" in text


def test_sweep_grid_rows_are_cells(tmp_path):
    from test_tables import _png

    cells = {
        f"s-{i:02d}": {"scheduler": s, "guidance_scale": g, "steps": 4, "negative_prompt": ""}
        for i, (s, g) in enumerate([("ddim", 1.0), ("ddim", 3.0), ("euler", 1.0), ("euler", 3.0)])
    }
    dirs = []
    for i in range(len(cells)):
        d = tmp_path / f"folder{i}"  # any layout: the rule names each folder's run and cell in params
        for j in range(2):
            _png(d / f"{j:05d}.png", j)
        dirs.append(str(d))
    names = [{"run": "base", "cell": cell} for cell in cells]
    grid = F.sweep_cells(dirs, {"runs": ["base"], "cells": cells, "generations": names})
    assert [(c["cell"], c["dir"]) for c in grid] == list(zip(cells, dirs))
    assert grid[3]["preset"]["scheduler"] == "euler" and grid[3]["preset"]["guidance_scale"] == 3.0
    fig = F.sweep_grid(grid, "mini", "Sampling sweep s", n_show=2)
    text = _texts(fig)
    assert "euler · CFG 3.0" in text and "mini study" in text
    with pytest.raises(ValueError, match="4 generation folder.s. but 3 named"):
        F.sweep_cells(dirs, {"runs": ["base"], "cells": cells, "generations": names[:3]})
    with pytest.raises(ValueError, match="sweep cell 's-09' of run 'base': not among"):
        F.sweep_cells(
            dirs[:1], {"runs": ["base"], "cells": cells, "generations": [{"run": "base", "cell": "s-09"}]}
        )


# ---------------------------------------------------------------- rules and report


def _report_captions():
    text = (REPO / "rules/figures.smk").read_text()
    return re.findall(r'caption="\.\./(report/[^"]+)"', text)


def test_every_report_caption_exists_and_renders():
    """Each report(...) caption is a file and renders as Jinja + RST, as `snakemake --report` does
    (which does not expand wildcards in caption paths: summary figures share one caption file that
    picks its text by the figure wildcard)."""
    import docutils.core
    import jinja2

    captions = _report_captions()
    assert len(captions) >= 7
    rendered = {}
    for rel in captions:
        src = (REPO / rel).read_text()
        assert "TODO" not in src, rel
        for figure in F.SUMMARY_FIGURES:
            wildcards = type(
                "W",
                (),
                {
                    "dataset": DS,
                    "embedder": EMB,
                    "run": "base",
                    "gen": "default",
                    "sweep": "samplers",
                    "figure": figure,
                },
            )()
            ctx = {"snakemake": type("S", (), {"config": {"study": "mini"}, "wildcards": wildcards})()}
            rst = jinja2.Template(src, undefined=jinja2.StrictUndefined).render(**ctx)
            html = docutils.core.publish_parts(
                rst, writer="html", settings_overrides={"report_level": 2, "halt_level": 2}
            )
            assert "mini" in html["body"], rel
            rendered[(rel, figure)] = html["body"]
    per_figure = {rendered[("report/summary_figure.rst", f)] for f in F.SUMMARY_FIGURES}
    assert len(per_figure) == len(F.SUMMARY_FIGURES)  # each summary figure gets its own caption
    assert "main comparison" in rendered[("report/summary_figure.rst", "sim95_by_dup_cond")]


FILE_SUFFIXES = {".json", ".parquet", ".npz", ".npy", ".csv", ".png", ".pdf", ".sha256", ".txt", ".tsv"}


def _fake_study(wf, study_file="tests/micro/config.yaml"):
    """Every output of a study (the micro by default) as an empty file or folder, in the dry run's
    (topological) order with increasing mtimes: a DAG that Snakemake sees as complete, made in seconds."""
    import os

    from conftest import snakemake

    args = ["--configfile", study_file, "--replace-workflow-config"]
    out = snakemake(["-n", "--forceall", *args], cwd=wf, check=True).stdout
    paths = [p.strip() for line in re.findall(r"^\s+output: (.*)$", out, re.M) for p in line.split(",")]
    assert paths, out[-2000:]
    for t, rel in enumerate(paths):
        p = wf / rel
        if rel.startswith("resources/webscale/") and rel.endswith(".parquet"):
            _fake_collection_parquet(wf, p, study_file)  # read at parse time (shard counts): a real parquet
        elif Path(rel).suffix in FILE_SUFFIXES:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        else:
            p.mkdir(parents=True, exist_ok=True)
        os.utime(p, (1_700_000_000 + t, 1_700_000_000 + t))
    return paths


def _fake_collection_parquet(wf, path, study_file):
    """A LAION-layout parquet with as many rows as the study's web collection's pretraining pictures."""
    import yaml

    from diffrep.miniweb import pretraining_rows

    cfg = yaml.safe_load((wf / study_file).read_text())
    (name,) = cfg["webscale"]["collections"]
    n = pretraining_rows(cfg["models"], cfg["webscale"]["collections"][name]["pretraining_of"], name)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"url": [f"file:{i}.png" for i in range(n)], "caption": ["x"] * n}).to_parquet(path)


@pytest.mark.slow
def test_deleting_figures_reruns_only_figure_rules(tmp_path):
    """Deleting results/{study}/figures and running `snakemake figures` re-runs no training,
    generation or embedding job (DAG level, on a fake complete micro study)."""
    import shutil

    from conftest import MICRO, copy_workflow, job_counts, snakemake

    wf = copy_workflow(tmp_path)
    paths = _fake_study(wf)
    assert any("/figures/" in p for p in paths) and any("/models/" in p for p in paths)
    snakemake(["--touch", "--cores", "1", *MICRO], cwd=wf, check=True)  # records metadata, as a real run
    assert job_counts(snakemake(["-n", *MICRO], cwd=wf, check=True).stdout) == {}
    shutil.rmtree(wf / "results/micro/figures")
    counts = job_counts(snakemake(["-n", *MICRO, "figures"], cwd=wf, check=True).stdout)
    assert set(counts) == {"summary_figure", "gallery", "weightdiff_figure", "sweep_grid", "figures"}, counts
    assert counts["summary_figure"] == len(F.SUMMARY_FIGURES) == 5


@pytest.mark.slow
def test_report_has_every_figure_and_table_by_category(micro_run):
    """`snakemake --report` on the finished micro study: one HTML with every figure and table,
    grouped by the categories of rules/figures.smk."""
    from conftest import MICRO, snakemake

    snakemake(["--report", "report.html", *MICRO], cwd=micro_run, check=True)
    html = (micro_run / "report.html").read_text(errors="replace")
    for category in ("Tables", "Figures", "Match galleries", "Weight differences", "Sampling sweeps"):
        assert category in html, category
    for name in (*F.SUMMARY_FIGURES, "summary.csv", "weightdiff.csv", "baselines.csv", "samplers.png"):
        assert name in html, name


def test_dataset_size_figure_plots_each_setting_over_its_sizes():
    """Only settings measured on several dataset sizes are drawn, at x = training images."""
    summary = pd.DataFrame(
        {
            "dataset": ["t100", "t300", "t1000", "t100"],
            "run": ["dup_both.x.none"] * 3 + ["nodup.x.none"],
            "preset": ["default"] * 4,
            "embedder": ["pixel"] * 4,
            "frac_above": [0.5, 0.1, 0.02, 0.3],
            "p95": [0.66, 0.40, 0.38, 0.55],
            "threshold": [0.433] * 4,
        }
    )
    baselines = pd.DataFrame(
        {
            "dataset": ["t100", "t300", "t1000"],
            "embedder": ["pixel"] * 3,
            "n_train": [100, 300, 1000],
            "p95": [0.27, 0.33, 0.37],
        }
    )
    fig = F.replication_by_dataset_size(summary, baselines, STYLE, "showcase")
    text = _texts(fig)
    assert "dup_both.x.none · default" in text and "nodup.x.none" not in text
    assert "threshold 0.433" in text
    frac_ax, p95_ax = fig.axes[:2]
    curves = {
        tuple(line.get_xdata()): tuple(line.get_ydata()) for line in frac_ax.lines if len(line.get_xdata())
    }
    assert curves[(100, 300, 1000)] == pytest.approx((0.5, 0.1, 0.02))
    assert any(tuple(line.get_ydata()) == pytest.approx((0.27, 0.33, 0.37)) for line in p95_ax.lines)


def test_dataset_size_figure_without_sizes_says_so():
    summary = pd.DataFrame(
        {
            "dataset": ["t100"],
            "run": ["dup_both.x.none"],
            "preset": ["default"],
            "embedder": ["pixel"],
            "frac_above": [0.5],
            "p95": [0.6],
            "threshold": [0.5],
        }
    )
    baselines = pd.DataFrame({"dataset": ["t100"], "embedder": ["pixel"], "n_train": [100], "p95": [0.3]})
    text = _texts(F.replication_by_dataset_size(summary, baselines, STYLE, "mini"))
    assert "no setting trained on datasets of several sizes" in text

"""Rule webscale_figures: thin entry point; the logic lives in diffrep.webfigures and diffrep.figures."""

import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../src")  # this checkout's diffrep, also in --sdm conda envs

import pandas as pd

from diffrep.figures import gallery, save_figure
from diffrep.webfigures import extract_match_images, shown_matches, top1_histogram
from diffrep.workflow import start_job

start_job(snakemake)
inp, out, p = snakemake.input, snakemake.output, snakemake.params
matches = pd.read_parquet(inp.matches)
shown = shown_matches(matches, p.size, p.top_k)
shards = [int(s) for s in p.shards]
tars = dict(zip(shards, inp.tars))
stats = {s: json.loads(Path(f).read_text()) for s, f in zip(shards, inp.stats)}
meta = extract_match_images(shown, tars, out.images, stats=stats)
title = f"Web-scale match gallery: {p.label['model']} vs {p.label['collection']} ({p.label['embedder']})"
fig = gallery(
    shown, inp.generations, out.images, meta, study=p.study, title=title, size=p.size, top_k=p.top_k
)
save_figure(fig, out.gallery, out.gallery_pdf, dpi=p.dpi)
save_figure(
    top1_histogram(matches, p.threshold, p.label, p.study), out.histogram, out.histogram_pdf, dpi=p.dpi
)

"""Read-only access to a study's results tree (docs/formats.md), for the app.

Paths follow the documented layout ``{results}/{study}/{dataset}/…``; nothing here writes. Every
name that reaches a path (dataset, run, preset, embedder, file) is checked against what exists on
disk first, so a request can never point outside the tree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from diffrep.app import adapter

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
GEN_FILE = re.compile(r"^[0-9]{5}\.png$")


class StudyError(ValueError):
    """A request the results tree cannot answer; the message is shown in the page."""


@dataclass(frozen=True)
class Selection:
    """One measured generation set: dataset × run × preset × embedder."""

    dataset: str
    run: str
    preset: str
    embedder: str

    def label(self) -> str:
        return f"{self.dataset} / {self.run} / {self.preset} / {self.embedder}"


def _name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise StudyError(f"{what}: {value!r} is not a valid name")
    return value


@dataclass
class Study:
    """A study's results (``root`` = results/{study}) and the resources folder beside them."""

    name: str
    root: Path
    resources: Path
    config: dict | None = None
    # how the user runs this study's workflow, for messages ("run `{snakemake} finetune_all` first")
    snakemake: str = ""
    _metadata: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.snakemake = self.snakemake or f"snakemake --profile profiles/{self.name}"

    def check_has_results(self) -> None:
        if not self.root.is_dir() or not self.datasets():
            raise StudyError(
                f"{self.root} has no results yet: run the study first "
                f"(`{self.snakemake}`, or `make mini` for the mini study)"
            )

    def datasets(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "generations").is_dir())

    @property
    def measured(self) -> list[Selection]:
        """Every selection with a similarity table, sorted (read on every call: a running study adds some)."""
        out = []
        for ds in self.datasets():
            for table in sorted((self.root / ds / "similarity").glob("*/*/*.parquet")):
                emb, run, preset = table.parts[-3], table.parts[-2], table.stem
                out.append(Selection(ds, run, preset, emb))
        return out

    def choices(self) -> dict[str, list[str]]:
        """The names the page offers: datasets, runs, presets, embedders (measured ones)."""
        m = self.measured
        return {
            "dataset": sorted({s.dataset for s in m}),
            "run": sorted({s.run for s in m}, key=lambda r: (r != adapter.BASE_RUN, r)),
            "preset": sorted({s.preset for s in m}, key=lambda p: (p != "default", p)),
            "embedder": sorted({s.embedder for s in m}),
        }

    def selection(self, dataset: str, run: str, preset: str, embedder: str) -> Selection:
        """The selection if the study measured it, else StudyError listing what exists."""
        sel = Selection(
            _name(dataset, "dataset"), _name(run, "run"), _name(preset, "preset"), _name(embedder, "embedder")
        )
        if sel not in self.measured:
            near = [
                s.run
                for s in self.measured
                if (s.dataset, s.preset, s.embedder) == (dataset, preset, embedder)
            ]
            raise StudyError(
                f"no similarity results for {sel.label()}"
                + (f"; runs measured with this preset and embedder: {', '.join(near)}" if near else "")
            )
        return sel

    def _sim(self, sel: Selection) -> Path:
        return self.root / sel.dataset / "similarity" / sel.embedder / sel.run / sel.preset

    def statistics(self, sel: Selection) -> dict:
        """The similarity statistics JSON of a selection ({run}/{gen}.json)."""
        path = self._sim(sel).with_suffix(".json")
        if not path.is_file():
            raise StudyError(f"{path} is missing: the retrieve step has not finished for {sel.label()}")
        return json.loads(path.read_text())

    def summary_row(self, sel: Selection) -> dict:
        """The row of tables/summary.csv (statistics with provenance), or the statistics JSON."""
        table = self.root / "tables" / "summary.csv"
        if table.is_file():
            df = pd.read_csv(table, dtype={"run": str, "preset": str})
            hit = df[
                (df["dataset"] == sel.dataset)
                & (df["run"] == sel.run)
                & (df["preset"] == sel.preset)
                & (df["embedder"] == sel.embedder)
            ]
            if len(hit):
                return {k: v for k, v in hit.iloc[0].items() if not (isinstance(v, float) and np.isnan(v))}
        stats = self.statistics(sel)
        return {k: v for k, v in stats.items() if not isinstance(v, dict)}

    def threshold(self, sel: Selection) -> float:
        return float(self.statistics(sel).get("threshold", 0.5))

    def matches(self, sel: Selection) -> pd.DataFrame:
        """The top-k matches table of a selection (one row per generation × rank)."""
        return pd.read_parquet(self._sim(sel).with_suffix(".parquet"))

    def top1(self, sel: Selection) -> np.ndarray:
        m = self.matches(sel)
        return m.loc[m["rank"] == 0, "similarity"].to_numpy(dtype=float)

    def baseline(self, dataset: str, embedder: str) -> np.ndarray | None:
        """Train-vs-train top-1 similarities (self excluded), or None when not computed."""
        path = self.root / dataset / "similarity" / embedder / "train_baseline.parquet"
        return pd.read_parquet(path)["similarity"].to_numpy(dtype=float) if path.is_file() else None

    def gallery(self, sel: Selection, limit: int = 24) -> list[dict]:
        """Generations sorted by top-1 similarity (highest first), each with its matches and prompt."""
        m = self.matches(sel)
        prompts = self.prompts(sel.dataset, sel.run, sel.preset)
        rows = []
        for gen, grp in m.sort_values("rank").groupby("generation", sort=False):
            grp = grp[grp["train_id"].notna()]
            rows.append(
                {
                    "generation": str(gen),
                    "top1": float(grp["similarity"].iloc[0]),
                    "prompt": prompts.get(str(gen), ""),
                    "matches": [(str(t), float(s)) for t, s in zip(grp["train_id"], grp["similarity"])],
                }
            )
        rows.sort(key=lambda r: -r["top1"])
        return rows[:limit]

    def prompts(self, dataset: str, run: str, preset: str) -> dict[str, str]:
        path = self.root / dataset / "generations" / run / preset / "prompts.parquet"
        if not path.is_file():
            return {}
        df = pd.read_parquet(path, columns=["file", "prompt_used"])
        return dict(zip(df["file"].astype(str), df["prompt_used"].astype(str)))

    def generation_image(self, dataset: str, run: str, preset: str, file: str) -> Path:
        """The path of a generated image, after checking every part of the name."""
        for value, what in ((dataset, "dataset"), (run, "run"), (preset, "preset")):
            _name(value, what)
        if not GEN_FILE.match(file):
            raise StudyError(f"generation file {file!r} is not a generation image name")
        path = self.root / dataset / "generations" / run / preset / file
        if not path.is_file():
            raise StudyError(f"{path} does not exist")
        return path

    def train_image(self, dataset: str, train_id: str) -> Path:
        """The training image of an id, through the dataset's metadata.parquet."""
        files = self._train_files(_name(dataset, "dataset"))
        if train_id not in files:
            raise StudyError(f"dataset {dataset}: no training image with id {train_id!r}")
        return self.resources / "data" / dataset / "images" / files[train_id]

    def _train_files(self, dataset: str) -> dict[str, str]:
        if dataset not in self._metadata:
            path = self.resources / "data" / dataset / "metadata.parquet"
            if not path.is_file():
                raise StudyError(f"{path} is missing: prepare the dataset first (`snakemake … data`)")
            df = pd.read_parquet(path, columns=["id", "file"])
            self._metadata[dataset] = dict(zip(df["id"].astype(str), df["file"].astype(str)))
        return self._metadata[dataset]

    def train_embeddings(self, dataset: str, embedder: str) -> Path:
        path = (
            self.root / _name(dataset, "dataset") / "embeddings" / _name(embedder, "embedder") / "train.npz"
        )
        if not path.is_file():
            raise StudyError(f"{path} is missing: run the embed_train step for {dataset} × {embedder} first")
        return path

    def model_runs(self, dataset: str) -> list[str]:
        """The models a prompt can be tried on: base, then every run with generations or a model."""
        ds = self.root / _name(dataset, "dataset")
        names = {
            p.name
            for sub in ("generations", "models")
            if (ds / sub).is_dir()
            for p in (ds / sub).iterdir()
            if p.is_dir()
        }
        names.discard(adapter.BASE_RUN)
        return [adapter.BASE_RUN, *sorted(names)]

    def base_model(self) -> str:
        """The base model's name: the config's ``base_model``, else generation_info.json's ``model``."""
        if self.config and self.config.get("base_model"):
            return str(self.config["base_model"])
        for info in sorted(self.root.glob("*/generations/base/*/generation_info.json")):
            model = json.loads(info.read_text()).get("model")
            if model:
                return Path(str(model)).name
        raise StudyError("cannot tell the base model: pass --config with the study's config file")

    def model_dir(self, dataset: str, run: str) -> Path:
        """The pipeline folder of a run; StudyError with the command that makes it when missing."""
        run = adapter.parse_run(run)
        if run == adapter.BASE_RUN:
            path = self.resources / "models" / self.base_model()
            target = adapter.MODELS_TARGET
        else:
            path = self.root / _name(dataset, "dataset") / "models" / run
            target = adapter.FINETUNE_TARGET
        if not (path / "model_index.json").is_file():
            raise StudyError(
                f"the model of run {run} is missing ({path}): run `{self.snakemake} {target}` first"
            )
        return path

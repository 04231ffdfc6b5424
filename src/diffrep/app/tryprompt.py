"""Try a prompt: generate one image with a study's model and find its nearest training images.

One :class:`Engine` per app. Pipelines are cached (the last ``max_models`` used) and loaded and run
under one lock, so two requests never load two models at once: a second request waits its turn (a
queue of one worker). Training-set embeddings and their faiss index are loaded once per dataset ×
embedder. Generated images go to the app's own cache folder, never into results/.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from diffrep.app import adapter
from diffrep.app.results import Study, StudyError

log = logging.getLogger("diffrep.app")
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1
MAX_CACHED_IMAGES = 500
PRESET_SHOWN = ("scheduler", "steps", "guidance_scale", "negative_prompt", "mitigation")


class InputError(ValueError):
    """Bad input from the page; the message is shown there."""


def check_prompt(prompt) -> str:
    """The prompt, stripped; InputError when empty or longer than MAX_PROMPT_CHARS characters."""
    text = str(prompt or "").strip()
    if not text:
        raise InputError("Type a prompt: it is empty.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The prompt has {len(text)} characters; at most {MAX_PROMPT_CHARS} are accepted.")
    return text


def parse_seed(value) -> int:
    """The seed as an int in [0, 2^63); InputError for anything else."""
    text = str(value if value is not None else "").strip()
    try:
        seed = int(text)
    except ValueError:
        raise InputError(f"The seed must be a whole number, got {text!r}.") from None
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"The seed must be between 0 and {MAX_SEED}, got {seed}.")
    return seed


def check_cache_dir(cache: Path, results: Path) -> Path:
    """The cache folder, refused when it lies inside the results folder (the app never writes there)."""
    cache, results = Path(cache).resolve(), Path(results).resolve()
    if cache == results or results in cache.parents:
        raise ValueError(
            f"the app's cache folder {cache} is inside {results}; the app never writes into results/"
        )
    return cache


class Engine:
    """Models, indexes and the lock of the try-a-prompt tab of one study."""

    def __init__(self, study: Study, cache: Path, max_models: int = 2, top_k: int | None = None):
        self.study = study
        self.cache = check_cache_dir(cache, study.root.parent)
        self.max_models = max_models
        self.top_k = top_k or int((study.config or {}).get("similarity", {}).get("top_k", 5))
        self.lock = threading.Lock()
        self._pipes: OrderedDict[Path, object] = OrderedDict()
        self._indexes: dict[tuple[str, str], tuple[list[str], object]] = {}
        self._embedders: dict[str, object] = {}
        self._device = None
        self.clip = None  # (model, processor) once loaded; False where CLIP score is off or not fetched

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = adapter.device()
        return self._device

    def pipeline(self, model_dir: Path):
        """The cached pipeline of a model folder (call with the lock held)."""
        if model_dir in self._pipes:
            self._pipes.move_to_end(model_dir)
            return self._pipes[model_dir]
        while len(self._pipes) >= self.max_models:
            self._pipes.popitem(last=False)
        pipe = adapter.load_pipeline(model_dir, self.device)
        self._pipes[model_dir] = pipe
        return pipe

    def warm_up(self) -> None:
        """Load what the first request would (libraries, indexes, the base model); log, never raise.

        Run in a background thread at start, so that the page is served at once and the first
        try-a-prompt request does not pay for importing torch and diffusers.
        """
        datasets = self.study.datasets()
        if not datasets:
            log.info("warm-up: nothing to load, %s has no results yet", self.study.root)
            return
        try:
            with self.lock:
                for emb in (self.study.config or {}).get("embedders") or {}:
                    self.index(datasets[0], emb)
                    self.embedder(emb)
                self.pipeline(self.study.model_dir(datasets[0], adapter.BASE_RUN))
        except Exception as err:  # noqa: BLE001 - a request will report the same problem in the page
            log.info("warm-up stopped: %s", err)
            return
        log.info("warm-up done: base model and training indexes of %s loaded", datasets[0])

    def new_image_path(self) -> Path:
        """A fresh file name in the cache; the oldest images beyond MAX_CACHED_IMAGES are removed."""
        self.cache.mkdir(parents=True, exist_ok=True)
        old = sorted(self.cache.glob("try-*.png"), key=lambda p: p.stat().st_mtime)
        for path in old[: max(0, len(old) - MAX_CACHED_IMAGES + 1)]:
            path.unlink(missing_ok=True)
        return self.cache / f"try-{uuid.uuid4().hex[:12]}.png"

    def index(self, dataset: str, embedder: str):
        """(training ids, faiss index) of a dataset × embedder, loaded once."""
        key = (dataset, embedder)
        if key not in self._indexes:
            emb = adapter.read_embeddings(self.study.train_embeddings(dataset, embedder))
            self._indexes[key] = (emb["ids"], adapter.build_index(emb["embeddings"]))
        return self._indexes[key]

    def embedder(self, name: str):
        if name not in self._embedders:
            cfg = ((self.study.config or {}).get("embedders") or {}).get(name)
            if cfg is None:
                raise StudyError(f"embedder {name!r} is not in the study's config")
            self._embedders[name] = adapter.make_embedder(cfg, self.study.resources)
        return self._embedders[name]

    def preset(self, name: str) -> dict:
        if not self.study.config:
            raise StudyError(
                "the study's config was not found: start the app with --config <the study's config file>"
            )
        presets = adapter.presets(self.study.config)
        if name not in presets:
            raise InputError(f"Unknown preset {name!r}; the study's presets: {', '.join(presets) or 'none'}.")
        return presets[name]

    def resolution(self) -> int:
        """The generation resolution, as the generate rule takes it (generation, else training)."""
        cfg = self.study.config or {}
        return int(
            (cfg.get("generation") or {}).get("resolution")
            or (cfg.get("training") or {}).get("resolution")
            or 512
        )

    def try_prompt(self, dataset: str, run: str, preset: str, embedder: str, seed, prompt) -> dict:
        """Generate, embed and search; a dict for the page (or InputError / StudyError)."""
        prompt, seed = check_prompt(prompt), parse_seed(seed)
        if dataset not in self.study.datasets():
            raise StudyError(
                f"dataset {dataset!r} has no results; datasets: {', '.join(self.study.datasets())}"
            )
        settings = self.preset(preset)
        model_dir = self.study.model_dir(dataset, run)
        notes = []
        start = time.perf_counter()
        with self.lock:  # one request at a time: the others wait here
            waited = time.perf_counter() - start
            ids, index = self.index(dataset, embedder)
            emb = self.embedder(embedder)
            pipe = self.pipeline(model_dir)
            n_tokens, limit = adapter.token_count(pipe, prompt)
            if n_tokens > limit:
                notes.append(
                    f"The prompt is {n_tokens} tokens long; the text encoder reads the first {limit}, "
                    "the rest is cut."
                )
            images, used = adapter.generate_images(
                pipe, [prompt], [seed], settings, self.resolution(), self.device
            )
            image, used = images[0], used[0]
            out = self.new_image_path()
            image.save(out)
            sims, rows = adapter.search(index, adapter.embed(emb, [out]), self.top_k)
        matches = [(ids[r], float(s)) for s, r in zip(sims[0], rows[0]) if r >= 0]
        threshold = float(((self.study.config or {}).get("similarity") or {}).get("threshold", 0.5))
        return {
            "image": out.name,
            "prompt_used": used,
            "seed": seed,
            "run": run,
            "preset": preset,
            "settings": {k: settings.get(k) for k in PRESET_SHOWN},
            "matches": matches,
            "threshold": threshold,
            "crosses": bool(matches and matches[0][1] > threshold),
            "notes": notes,
            "seconds": round(time.perf_counter() - start, 2),
            "waited": round(waited, 2),
        }

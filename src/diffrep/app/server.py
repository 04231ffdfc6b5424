"""The Starlette application: the page, two HTML-fragment endpoints, and the images.

Errors a user can cause (bad input, a missing model, a study without results) come back as a
message in the page with status 400; anything else is logged with its traceback on the server and
shown in the page as one line (status 500). The app keeps serving either way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from diffrep.app import adapter, page, render
from diffrep.app.results import Study, StudyError
from diffrep.app.tryprompt import Engine, InputError

log = logging.getLogger("diffrep.app")
USER_ERRORS = (StudyError, InputError, adapter.AdapterError)


def _fragment(fn):
    """Wrap an endpoint returning HTML so that every error becomes a message fragment."""

    def endpoint(request: Request) -> Response:
        try:
            return HTMLResponse(fn(request))
        except USER_ERRORS as err:
            return HTMLResponse(render.message(str(err)), status_code=400)
        except Exception as err:  # noqa: BLE001 - the page shows one line; the log keeps the traceback
            log.exception("request %s failed", request.url.path)
            return HTMLResponse(
                render.message(f"Internal error ({type(err).__name__}): {err}"), status_code=500
            )

    return endpoint


def _media(fn):
    def endpoint(request: Request) -> Response:
        try:
            return FileResponse(fn(request.path_params))
        except (StudyError, ValueError) as err:
            return Response(str(err), status_code=404, media_type="text/plain")

    return endpoint


def index_page(study: Study, engine: Engine) -> str:
    title = f"diffrep · {study.name} study"
    try:
        study.check_has_results()
    except StudyError as err:
        return page.page(title, render.message(str(err)), render.message(str(err)))
    choices = study.choices()
    if not study.measured:
        browse = render.message(f"{study.root} has generations but no similarity results yet.", "info")
    else:
        browse = page.browse_tab(choices)
    runs = sorted(
        {r for ds in study.datasets() for r in study.model_runs(ds)}, key=lambda r: (r != adapter.BASE_RUN, r)
    )
    presets = list(adapter.presets(study.config)) if study.config else choices["preset"]
    embedders = list((study.config or {}).get("embedders") or choices["embedder"])
    lists = (study.datasets(), runs, presets, embedders)
    return page.page(title, browse, page.try_tab(*lists), page.validation_tab(*lists))


def browse_fragment(study: Study, params) -> str:
    sel = study.selection(
        params.get("dataset", ""), params.get("run", ""), params.get("preset", ""), params.get("embedder", "")
    )
    threshold = study.threshold(sel)
    return (
        f"<h2>{sel.run}</h2>"
        + '<div class="stats">'
        + render.histogram_svg(study.top1(sel), study.baseline(sel.dataset, sel.embedder), threshold)
        + render.summary(study.summary_row(sel))
        + "</div>"
        + render.gallery(study.gallery(sel), sel.dataset, sel.run, sel.preset, threshold)
    )


async def _json_work(request: Request, work) -> Response:
    """Parse a JSON object body, then run `work(body) -> HTML` in a worker thread, errors as messages."""
    from starlette.concurrency import run_in_threadpool

    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        return HTMLResponse(render.message("The request body is not JSON."), status_code=400)
    if not isinstance(body, dict):
        return HTMLResponse(render.message("The request body must be a JSON object."), status_code=400)
    return await run_in_threadpool(_fragment(lambda _r: work(body)), request)


def try_fragment(engine: Engine, body: dict) -> str:
    args = {k: body.get(k, "") for k in ("dataset", "run", "preset", "embedder", "seed", "prompt")}
    return render.try_result(engine.try_prompt(**args), args["dataset"])


def validation_fragment(engine: Engine, body: dict, prompts: list[str] | None) -> str:
    from diffrep.app.validation import compare

    runs = body.get("runs") if isinstance(body.get("runs"), list) else []
    res = compare(
        engine,
        str(body.get("dataset", "")),
        [str(r) for r in runs],
        str(body.get("preset", "")),
        str(body.get("embedder", "")),
        prompts,
    )
    return render.validation_table(res, str(body.get("dataset", "")))


def make_app(study: Study, engine: Engine, prompts: list[str] | None = None) -> Starlette:
    """The ASGI app of one study (read-only over its results, writing only to the engine's cache).

    `prompts`: the validation prompt set (default: caption [0] of the first training images).
    """

    async def try_endpoint(request: Request) -> Response:
        return await _json_work(request, lambda body: try_fragment(engine, body))

    async def validate_endpoint(request: Request) -> Response:
        return await _json_work(request, lambda body: validation_fragment(engine, body, prompts))

    routes = [
        Route("/", _fragment(lambda r: index_page(study, engine))),
        Route("/api/browse", _fragment(lambda r: browse_fragment(study, r.query_params))),
        Route("/api/try", try_endpoint, methods=["POST"]),
        Route("/api/validate", validate_endpoint, methods=["POST"]),
        Route(
            "/media/gen/{dataset}/{run}/{preset}/{file}",
            _media(lambda p: study.generation_image(p["dataset"], p["run"], p["preset"], p["file"])),
        ),
        Route(
            "/media/train/{dataset}/{train_id}",
            _media(lambda p: study.train_image(p["dataset"], p["train_id"])),
        ),
        Route("/media/try/{file}", _media(lambda p: cached_image(engine.cache, p["file"]))),
        Route("/healthz", lambda r: Response("ok", media_type="text/plain")),
    ]
    return Starlette(routes=routes)


def cached_image(cache: Path, name: str) -> Path:
    if not (name.startswith("try-") and name.endswith(".png") and "/" not in name and ".." not in name):
        raise StudyError(f"{name!r} is not an image of the app")
    path = cache / name
    if not path.is_file():
        raise StudyError(f"{name} is no longer in the cache")
    return path

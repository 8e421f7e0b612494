"""The dashboard's HTTP API (FastAPI) and its static front end.

    GET  /                          the single-page front end (lorakit/ui/static)
    GET  /api/health                liveness (never needs the token)
    GET  /api/schema                the New-run form: TrainConfig's fields, types, defaults, help
    POST /api/preview               {values}: the data as the model sees it (trained tokens marked)
    GET  /api/runs                  every run: status, step, ETA, tokens/s, losses
    POST /api/runs                  {name, values}: write RUNS/name/train.yaml, start training
    GET  /api/runs/{name}           one run: summary, resolved config, model card, log tail
    GET  /api/runs/{name}/metrics   metrics.jsonl records (``?since=STEP``: newer ones only)
    POST /api/runs/{name}/stop      checkpoint and stop after the current step
    POST /api/runs/{name}/resume    continue a stopped run from its newest checkpoint
    GET  /api/runs/{name}/inspect   rank spectra (``?vs=OTHER``: subspace similarity too)
    POST /api/evals                 {runs, data, limit}: `lorakit eval` of each run, in the background
    GET  /api/evals/{id}            that job's state
    GET  /api/compare               every eval report, grouped by data file
    POST /api/chat                  {runs, base, prompt, ...}: answers side by side (server-sent events)
    POST /api/runs/{name}/export    {to, outtype, ...}: `lorakit export` of a finished run (export_actions)

Errors are JSON ``{"error": reason}`` with a 4xx status; no traceback reaches the client. With a
token set, every ``/api`` call except health needs ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorakit.serve.sampling import SamplingParams
from lorakit.train.config_io import to_yaml
from lorakit.ui.chat import MAX_ADAPTERS, ChatColumn, ChatHub, event_json
from lorakit.ui.export_actions import register_export_routes
from lorakit.ui.forms import config_from_form, form_fields
from lorakit.ui.jobs import Jobs
from lorakit.ui.runs import RunError, Runs, json_body

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("lorakit.ui")

__all__ = ["create_app"]


def create_app(runs_dir: str | Path, token: str = "", cwd: str | Path | None = None,
               chat: ChatHub | None = None) -> FastAPI:
    runs = Runs(runs_dir)
    jobs = Jobs(runs, cwd)
    hub = chat or ChatHub()

    @asynccontextmanager
    async def lifespan(app):
        yield
        hub.close()

    app = FastAPI(title="lorakit ui", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.runs, app.state.jobs, app.state.chat = runs, jobs, hub
    _install_guards(app, token)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "runs_dir": str(runs.root)}

    @app.get("/api/schema")
    async def form_schema():
        return {"fields": form_fields()}

    @app.post("/api/preview")
    async def preview(request: Request):
        body = await json_body(request)
        cfg = config_from_form(body.get("values", {}), str(runs.root / "preview"))
        from lorakit.train.preview import preview as data_preview

        try:
            return await asyncio.to_thread(data_preview, cfg, int(body.get("n", 5)))
        except (ValueError, FileNotFoundError) as err:
            raise RunError(422, str(err)) from None

    @app.get("/api/runs")
    async def list_runs():
        return {"runs_dir": str(runs.root),
                "runs": [runs.summary(n).__dict__ for n in runs.names()]}

    @app.post("/api/runs")
    async def new_run(request: Request):
        body = await json_body(request)
        name = body.get("name")
        path = runs.path(name, must_exist=False)
        cfg = config_from_form(body.get("values", {}), str(path))
        jobs.check_inputs(cfg)
        text = to_yaml(cfg)
        command = jobs.train(name, text)
        return {"name": name, "command": command, "yaml": text}

    @app.get("/api/runs/{name}")
    async def run_detail(name: str):
        return runs.detail(name)

    @app.get("/api/runs/{name}/metrics")
    async def run_metrics(name: str, since: int = 0):
        return {"name": name, "records": runs.metrics(name, since)}

    @app.post("/api/runs/{name}/stop")
    async def stop_run(name: str):
        jobs.stop(name)
        return {"name": name, "status": "stopping"}

    @app.post("/api/runs/{name}/resume")
    async def resume_run(name: str):
        return {"name": name, "command": jobs.resume(name)}

    @app.get("/api/runs/{name}/inspect")
    async def inspect_run(name: str, vs: str = ""):
        from lorakit.ui.inspect import inspect_adapter

        adapter = _adapter(runs, name)
        other = _adapter(runs, vs) if vs else None
        try:
            return await asyncio.to_thread(inspect_adapter, adapter, other)
        except ValueError as err:
            raise RunError(422, str(err)) from None

    @app.post("/api/evals")
    async def start_eval(request: Request):
        body = await json_body(request)
        names = body.get("runs")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RunError(422, "runs must be a list of run names")
        for n in names:
            runs.path(n)
        return jobs.evaluate(names, str(body.get("data", "")), int(body.get("limit", 0)),
                             int(body.get("max_new_tokens", 64)))

    @app.get("/api/evals/{job_id}")
    async def eval_status(job_id: str):
        return jobs.eval_job(job_id)

    @app.get("/api/compare")
    async def compare():
        return {"groups": _compare_groups([r for n in runs.names() for r in runs.evals(n)])}

    @app.post("/api/chat")
    async def chat_stream(request: Request):
        body = await json_body(request)
        model, columns = _chat_columns(runs, body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RunError(422, "prompt must be a non-empty string")
        template = body.get("template", "chat")
        if template not in ("chat", "alpaca"):
            raise RunError(422, f"template must be 'chat' or 'alpaca', got {template!r}")
        try:
            params = SamplingParams(max_tokens=int(body.get("max_tokens", 64)),
                                    temperature=float(body.get("temperature", 0.0)),
                                    seed=body.get("seed"))
        except (TypeError, ValueError) as err:
            raise RunError(422, f"sampling: {err}") from None
        events = hub.stream(model, columns, prompt, template, params)
        try:  # load and tokenize before the stream starts, so a bad request gets a status
            first = await events.__anext__()
        except (ValueError, FileNotFoundError, OSError) as err:
            raise RunError(422, str(err)) from None
        return StreamingResponse(_sse(columns, first, events), media_type="text/event-stream")

    register_export_routes(app, runs, cwd)   # /api/runs/{name}/export(s), /api/exports/{id}
    return app


async def _sse(columns: list[ChatColumn], first, events):
    """``{"columns": [...]}``, then one event per text piece / end of a column, then [DONE]."""
    try:
        yield f"data: {json.dumps({'columns': [c.label for c in columns]})}\n\n"
        yield f"data: {json.dumps(event_json(*first))}\n\n"
        async for item in events:
            yield f"data: {json.dumps(event_json(*item))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()  # a client that went away cancels its generations


def _adapter(runs: Runs, name: str) -> Path:
    adapter = runs.adapter_dir(name)
    if adapter is None:
        raise RunError(409, f"run {name!r} has no adapter yet (no final adapter, no checkpoint)")
    return adapter


def _chat_columns(runs: Runs, body: dict) -> tuple[str, list[ChatColumn]]:
    names = body.get("runs", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RunError(422, "runs must be a list of run names")
    if len(names) > MAX_ADAPTERS or len(set(names)) != len(names):
        raise RunError(422, f"choose 1-{MAX_ADAPTERS} distinct runs (got {names})")
    models = {str(runs.config(n).get("model")) for n in names}
    if len(models) > 1:
        raise RunError(422, f"the runs have different base models ({', '.join(sorted(models))}); "
                            "one chat compares adapters of one base")
    model = models.pop() if models else body.get("model")
    if not isinstance(model, str) or not model:
        raise RunError(422, "give runs, or a base model to chat with")
    columns = ([ChatColumn("base", None)] if body.get("base", True) else [])
    columns += [ChatColumn(n, _adapter(runs, n)) for n in names]
    if not columns:
        raise RunError(422, "nothing to chat with: choose the base model and/or runs")
    return model, columns


def _compare_groups(reports: list[dict]) -> list[dict]:
    """Eval reports grouped by (base model, data file): one column per model evaluated (the
    base once, then each run's adapter), with metrics and per-example predictions."""
    groups: dict[tuple, dict] = {}
    for rep in reports:
        key = (rep.get("model"), rep.get("data"))
        group = groups.setdefault(key, {"model": key[0], "data": key[1], "columns": []})
        results, examples = rep.get("results", {}), rep.get("examples", {})
        if "base" in results and not any(c["label"] == "base" for c in group["columns"]):
            group["columns"].insert(0, {"label": "base", "metrics": results["base"],
                                        "examples": examples.get("base", [])})
        if "adapter" in results:
            group["columns"] = [c for c in group["columns"] if c["label"] != rep["run"]]
            group["columns"].append({"label": rep["run"], "metrics": results["adapter"],
                                     "examples": examples.get("adapter", [])})
    return list(groups.values())


def _install_guards(app: FastAPI, token: str) -> None:
    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if token and path.startswith("/api/") and path != "/api/health":
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return JSONResponse({"error": "missing or wrong token (send 'Authorization: "
                                              "Bearer <token>')"}, status_code=401)
        try:
            return await call_next(request)
        except Exception as err:  # a bug costs one request a 500, never a traceback
            log.exception("unhandled error on %s", path)
            return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)

    @app.exception_handler(RunError)
    async def run_error(request, err: RunError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request, err: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"invalid request: {where}"}, status_code=422)

    @app.exception_handler(ValueError)
    async def value_error(request, err: ValueError):
        return JSONResponse({"error": str(err)}, status_code=422)

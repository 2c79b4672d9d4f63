"""The HTTP service: a trained run behind FastAPI (`python -m mer.serve --model RUN_DIR`).

    POST /ser/analyze   multipart/form-data: `audio` (a WAV/FLAC/MP3/... file), optional `text` (its transcript),
                        optional `context` (previous dialogue turns, one per line), optional `speaker`
                        -> {label, probabilities, confidence, model_id, latency_ms, calibrated, temperature, ...}
    GET  /health        {status: ok, model_id, track, calibrated, uptime_s, requests, batches}
    GET  /labels        {labels, model_id}
    GET  /              the web page (upload or record a clip, type the transcript, see the probabilities)

Every error is JSON `{"error": "<one line>"}` with a 4xx status: no file or a file in another field (400), an
empty file (400), not audio (415), over the upload limit (413) or the duration limit (413), a text-only model
without text (400). An unexpected failure is a 500 with one line, never a traceback.

Micro-batching: requests are queued; a worker takes the first one, waits up to `batch_window_ms` for more (at most
`max_batch`), and runs them through the model as one batch in a worker thread (`max_batch` 1 = no batching).
Settings come from the command line or `MER_SERVE_*` environment variables (see `Settings.from_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, fields

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mer.errors import UserError
from mer.serving.audio_io import BadAudio, decode_bytes
from mer.serving.page import page_html
from mer.serving.predict import Clip, Predictor, load_predictor

ENV_PREFIX = "MER_SERVE_"


@dataclass
class Settings:
    """The service's settings; each also from `MER_SERVE_<NAME>` (e.g. MER_SERVE_MODEL, MER_SERVE_PORT)."""

    model: str = ""  # the trained run directory
    checkpoint: str = "best"
    host: str = "127.0.0.1"
    port: int = 8001
    device: str = "cpu"
    max_upload_mb: float = 20.0
    max_duration_s: float = 60.0
    batch_window_ms: float = 5.0  # how long the batcher waits for more requests after the first
    max_batch: int = 16  # 1 = no micro-batching
    max_text_chars: int = 5000

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                try:
                    values[f.name] = type(getattr(cls, f.name))(raw) if f.name != "model" else raw
                except ValueError:
                    raise UserError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: expected a "
                                    f"{type(getattr(cls, f.name)).__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        s.check()
        return s

    def check(self) -> None:
        if not self.model:
            raise UserError("no model: give --model RUN_DIR (or MER_SERVE_MODEL)")
        for name, ok in (("max_upload_mb", self.max_upload_mb > 0), ("max_duration_s", self.max_duration_s > 0),
                         ("batch_window_ms", self.batch_window_ms >= 0), ("max_batch", self.max_batch >= 1),
                         ("port", 0 <= self.port < 65536)):
            if not ok:
                raise UserError(f"setting {name} = {getattr(self, name)!r} is out of range")


class HTTPProblem(Exception):
    """A request the service refuses: status code and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Batcher:
    """Gathers concurrent requests into batches for one model (see the module doc)."""

    def __init__(self, predictor: Predictor, window_ms: float, max_batch: int) -> None:
        self.predictor, self.window_s, self.max_batch = predictor, window_ms / 1000.0, max_batch
        self.queue: asyncio.Queue | None = None
        self.loop = None
        self.task = None
        self.batches = 0
        self.batched_items = 0

    def _ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.task is None or self.task.done():
            self.loop, self.queue = loop, asyncio.Queue()
            self.task = loop.create_task(self._work())

    async def submit(self, clip: Clip):
        self._ensure()
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((clip, fut))
        return await fut

    async def _work(self) -> None:
        while True:
            first = await self.queue.get()
            items = [first]
            deadline = time.perf_counter() + self.window_s
            while len(items) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    while len(items) < self.max_batch and not self.queue.empty():
                        items.append(self.queue.get_nowait())
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            clips = [c for c, _ in items]
            try:
                out = await asyncio.to_thread(self.predictor.predict, clips)
                self.batches += 1
                self.batched_items += len(clips)
                for k, (_, fut) in enumerate(items):
                    if not fut.done():
                        fut.set_result((out.probs[k], out.notes[k], {n: float(v[k]) for n, v in out.dims.items()},
                                        len(clips)))
            except Exception as exc:  # one bad batch fails its requests, not the worker
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self.task


def _context_turns(raw: str) -> list[str]:
    raw = (raw or "").strip()
    if not raw:
        return []
    if raw.startswith("["):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise HTTPProblem(400, "field 'context': starts with '[' but is not a JSON list of strings") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise HTTPProblem(400, "field 'context': expected a JSON list of strings or one turn per line")
        return [v for v in value if v.strip()]
    return [line.strip() for line in raw.splitlines() if line.strip()]


def create_app(settings: Settings | None = None, predictor: Predictor | None = None):
    """The FastAPI app for `settings.model` (or an already loaded `predictor`)."""
    settings = settings or Settings.from_env()
    predictor = predictor or load_predictor(settings.model, settings.checkpoint, settings.device)
    batcher = Batcher(predictor, settings.batch_window_ms, settings.max_batch)
    started = time.time()
    counts = {"requests": 0, "errors": 0}
    max_bytes = int(settings.max_upload_mb * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()

    app = FastAPI(title="MER emotion recognition", version="1", lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.predictor, app.state.settings, app.state.batcher = predictor, settings, batcher

    def problem(status: int, message: str) -> JSONResponse:
        counts["errors"] += 1
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPProblem)
    async def _problem(request, exc: HTTPProblem):
        return problem(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return problem(400, "bad request: " + "; ".join(str(e.get("msg", e)) for e in exc.errors())[:300])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        return problem(500, f"internal error ({type(exc).__name__}); see the service's log")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model_id": predictor.model_id, "track": predictor.track,
                "model": predictor.model_name, "mode": predictor.mode, "calibrated": predictor.temperature is not None,
                "uptime_s": round(time.time() - started, 1), "requests": counts["requests"],
                "errors": counts["errors"], "batches": batcher.batches,
                "mean_batch": round(batcher.batched_items / batcher.batches, 2) if batcher.batches else None}

    @app.get("/labels")
    async def labels():
        return {"labels": predictor.labels, "model_id": predictor.model_id}

    @app.get("/info")
    async def info():
        return {**predictor.info(), "limits": {"max_upload_mb": settings.max_upload_mb,
                                               "max_duration_s": settings.max_duration_s},
                "batching": {"window_ms": settings.batch_window_ms, "max_batch": settings.max_batch}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html(predictor.labels, predictor.model_id, predictor.uses_audio,
                                      predictor.uses_text))

    @app.post("/ser/analyze")
    async def analyze(request: Request):
        t0 = time.perf_counter()
        counts["requests"] += 1
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise HTTPProblem(415, f"expected multipart/form-data with a file field 'audio' (got content type "
                                   f"{ctype.split(';')[0] or 'none'!r})")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes + 64 * 1024:
            raise HTTPProblem(413, f"upload of {int(length) / 1e6:.1f} MB is over the limit of "
                                   f"{settings.max_upload_mb:g} MB")
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as exc:
            raise HTTPProblem(400, f"cannot read the multipart form ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else 'malformed'})") from None
        upload = form.get("audio")
        files = [k for k, v in form.multi_items() if hasattr(v, "read")]
        text = form.get("text") or ""
        if not isinstance(text, str):
            raise HTTPProblem(400, "field 'text' must be a plain form field, not a file")
        if len(text) > settings.max_text_chars:
            raise HTTPProblem(413, f"field 'text' has {len(text)} characters, over the limit of "
                                   f"{settings.max_text_chars}")
        context_raw = form.get("context") or ""
        if not isinstance(context_raw, str):
            raise HTTPProblem(400, "field 'context' must be a plain form field, not a file")
        context = _context_turns(context_raw)
        speaker = form.get("speaker") if isinstance(form.get("speaker"), str) else None
        wave, duration = None, None
        if upload is None or not hasattr(upload, "read"):
            if predictor.uses_audio:
                other = f" (got file field{'s' if len(files) > 1 else ''} {', '.join(map(repr, files))})" \
                    if files else ""
                raise HTTPProblem(400, f"no audio: send the clip as the multipart file field 'audio'{other}")
        else:
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise HTTPProblem(413, f"upload {upload.filename!r} is over the limit of {settings.max_upload_mb:g} MB")
            name = upload.filename or "audio"
            try:
                wave = await asyncio.to_thread(decode_bytes, data, name)
            except BadAudio as exc:
                status = 400 if "empty" in str(exc) or "no audio samples" in str(exc) else 415
                raise HTTPProblem(status, str(exc)) from None
            duration = wave.size / 16000
            if duration > settings.max_duration_s:
                raise HTTPProblem(413, f"{name}: clip of {duration:.1f} s is longer than the limit of "
                                       f"{settings.max_duration_s:g} s")
        clip = Clip(wave, text, context, speaker)
        try:
            predictor.check_clip(clip, upload.filename if upload is not None and hasattr(upload, "filename")
                                 else "request")
        except BadAudio as exc:
            raise HTTPProblem(400, str(exc)) from None
        probs, note, dims, batch_size = await batcher.submit(clip)
        probs = np.asarray(probs, dtype=np.float64)
        k = int(probs.argmax())
        notes = [n for n in (note,) if n]
        if context and int(predictor.cfg.data.context_turns) == 0:
            notes.append("context ignored: the model was trained without dialogue context")
        if text and not predictor.uses_text:
            notes.append("text ignored: the model reads audio only")
        body = {"label": predictor.labels[k], "confidence": float(probs[k]),
                "probabilities": {name: float(p) for name, p in zip(predictor.labels, probs, strict=True)},
                "model_id": predictor.model_id, "calibrated": predictor.temperature is not None,
                "temperature": predictor.temperature, "duration_s": None if duration is None else round(duration, 3),
                "batch_size": batch_size, "latency_ms": round((time.perf_counter() - t0) * 1000.0, 2),
                "notes": notes}
        if dims:
            body["dimensions_01"] = dims
        return body

    return app


def run(settings: Settings) -> None:
    """Serve `settings` with uvicorn (blocking)."""
    import uvicorn

    app = create_app(settings)
    print(f"serving {app.state.predictor.model_id} on http://{settings.host}:{settings.port}/  (POST /ser/analyze, "
          f"GET /health, /labels, / for the page)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


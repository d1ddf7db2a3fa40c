"""The HTTP face of a :class:`~cln_textgen.serving.service.GenerationService`.

Starlette routes; every answer is JSON except the page and the event stream.
Requests wait for the service's decode worker without blocking the event
loop, so health checks and label look-ups answer while a decode runs.
"""

import asyncio
import contextlib
import json
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from cln_textgen.serving.service import Busy, Cancelled, RequestError


def _error(status, message, field=None):
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def _read_json(request, limit):
    """The body as JSON, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(None, f"the body is {declared} bytes; at most {limit}", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(None, f"the body is over {limit} bytes", status=413)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(None, f"the body is not JSON ({e})", status=400) from None


def build_app(service):
    page = resources.files("cln_textgen.serving").joinpath("page.html").read_text(encoding="utf-8")

    async def parsed(request):
        return service.parse(await _read_json(request, service.limits.max_body_bytes))

    async def health(_):
        return JSONResponse({"status": "ok", **service.counts()})

    async def labels(_):
        return JSONResponse(service.describe())

    async def index(_):
        return HTMLResponse(page)

    async def generate(request):
        try:
            future = service.submit(await parsed(request))
            return JSONResponse(await asyncio.wrap_future(future))
        except RequestError as e:  # from parsing, or found by the decoder
            return _error(e.status, str(e), e.field)
        except Busy as e:
            return _error(503, str(e))
        except ClientDisconnect:
            return _error(400, "the client closed the request")

    async def generate_stream(request):
        try:
            parsed_request = await parsed(request)
        except RequestError as e:
            return _error(e.status, str(e), e.field)
        except ClientDisconnect:
            return _error(400, "the client closed the request")
        loop = asyncio.get_running_loop()
        events = asyncio.Queue()
        gone = False

        def on_piece(row, label, piece):
            event = ("end", {"row": row, "label": label}) if piece is None else \
                ("text", {"row": row, "label": label, "text": piece})
            loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            future = service.submit(parsed_request, on_piece, cancelled=lambda: gone)
        except RequestError as e:
            return _error(e.status, str(e), e.field)
        except Busy as e:
            return _error(503, str(e))
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(events.put_nowait, ("_done", f)))
        # Wait for the first piece: an error found before decoding starts (a
        # prompt too long for the model) is still an HTTP error, not an event.
        first = await events.get()
        if first[0] == "_done" and isinstance(first[1].exception(), RequestError):
            e = first[1].exception()
            return _error(e.status, str(e), e.field)

        async def stream():
            nonlocal gone
            name, data = first
            try:
                while name != "_done":
                    yield _sse(name, data)
                    name, data = await events.get()
                try:
                    yield _sse("done", data.result())
                except Cancelled:
                    return
                except Exception as e:  # noqa: BLE001 - the stream has begun: report in-band
                    yield _sse("error", {"error": f"{type(e).__name__}: {e}"})
            finally:
                gone = True  # a client that left frees the worker at its next token

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        service.close()

    app = Starlette(routes=[
        Route("/", index),
        Route("/health", health),
        Route("/v1/labels", labels),
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/generate/stream", generate_stream, methods=["POST"]),
    ], lifespan=lifespan, exception_handlers={HTTPException: _http_error, 500: _server_error})
    return app


async def _server_error(_, exc):
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


async def _http_error(_, exc):
    # Starlette's own answers (unknown path, wrong method) as JSON like every other error.
    return _error(exc.status_code, exc.detail)


def _sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

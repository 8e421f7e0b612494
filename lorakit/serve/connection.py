"""The HTTP connection under a request: its body read within a size limit as strict JSON, and
noticing a client that hangs up before its answer is ready.

A body's size is checked while it is read (a chunked body carries no content-length for the
guard in ``api.py`` to check). Strict JSON: ``NaN``/``Infinity`` (which Python's parser takes)
and strings holding a lone UTF-16 surrogate are refused, naming where they are.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

from fastapi import Request as HTTPRequest
from starlette.requests import ClientDisconnect

from lorakit.serve.request_bodies import APIError, check_json


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


async def read_json(request: HTTPRequest, limit: int):
    """The body parsed as JSON, read up to ``limit`` bytes: 413 beyond it, 400 naming what is
    wrong otherwise, 499 if the client leaves while sending it."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(499, "the client went away while sending the request") from None
    try:
        data = json.loads(b"".join(chunks), parse_constant=_no_constant)
        check_json(data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise APIError(400, f"request body is not valid JSON ({err})") from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply") from None
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def unless_gone(request: HTTPRequest, awaitable: Awaitable, on_gone: Callable[[], None]):
    """Await ``awaitable``; if the client disconnects first, call ``on_gone`` (which cancels
    the engine's requests: their batch places and slots are freed at its next step) and raise
    ClientGone."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    left = False
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client left (or this handler itself was cancelled)
            work.cancel()
            on_gone()
            left = True
    if left:
        raise ClientGone
    return work.result()


async def _disconnected(request: HTTPRequest) -> None:
    """Return once the client has disconnected (the body is already read, so ASGI's receive
    yields nothing but ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

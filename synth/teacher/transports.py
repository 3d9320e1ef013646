"""The HTTP paths of a teacher call: one POST of an OpenAI-style body to an endpoint, the decoded JSON back.

Three ways to send it (``TeacherConfig.transport``): ``direct``, one aiohttp POST (the default for a teacher on
this machine); ``aiohttp``, the official ``openai`` SDK on its aiohttp transport (the default for hosted
endpoints); ``httpx``, the SDK on its default transport. The SDK's own retries are off so that the client's
decide. Why direct: the SDK's request building (options models, URL parsing, header merging, its httpx request
objects even on the aiohttp transport) doubles the client's CPU per call against a fast local teacher: 1,132 vs
2,361 calls/s on one core (benchmarks/synth_throughput.py).

A transport knows nothing of retries, budgets or the cache: it raises ``TransportError`` when no answer came
(timeout, connection, malformed body) and ``HTTPStatusError`` for an HTTP error status, and the client
(``client.py``) decides what each means. One transport object serves one event loop (its connections belong to it).
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import json
import math
import time
from typing import Optional, Protocol

from .config import EndpointConfig

# The openai SDK's optional aiohttp transport (`openai[aiohttp]`), and the direct path, need aiohttp.
HAVE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None
TRANSPORTS = ("auto", "direct", "aiohttp", "httpx")


class TransportError(Exception):
    """No answer came: a timeout, a refused or dropped connection, a body that is not JSON. ``reason`` says which
    and names the endpoint's host (never its key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class HTTPStatusError(Exception):
    """The endpoint answered with an HTTP error ``status``; ``detail`` is its message (from an OpenAI-style error
    body when there is one)."""

    def __init__(self, status: int, headers, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.headers, self.detail = status, headers, detail

    @property
    def retry_after(self) -> Optional[float]:
        """Seconds the server asked us to wait (``Retry-After``), or None."""
        return parse_retry_after(self.headers)


class Transport(Protocol):
    async def post(self, ep: EndpointConfig, path: str, body: dict, api_key: str) -> dict:
        """POST ``body`` to ``ep.base_url + path``; the decoded JSON body."""

    async def aclose(self) -> None:
        """Close the connections (of the running event loop)."""


def resolve_transport(name: str, endpoints: list[EndpointConfig]) -> str:
    """The transport to use: ``auto`` is ``direct`` when every endpoint is on this machine and the SDK on aiohttp
    otherwise (``httpx`` without aiohttp). Hosted endpoints answer in 100s of ms, and the SDK's handling of
    providers is worth its CPU there; local ones (vLLM, llama.cpp, transformers serve) answer in ms, where the
    client's CPU per call would become the bottleneck."""
    if name not in TRANSPORTS:
        raise ValueError(f"transport must be auto, direct, aiohttp or httpx, not {name!r}")
    if name == "auto":
        name = ("direct" if all(e.is_local for e in endpoints) else "aiohttp") if HAVE_AIOHTTP else "httpx"
    if name in ("direct", "aiohttp") and not HAVE_AIOHTTP:
        raise ValueError(f"transport {name!r} needs aiohttp (pip install aiohttp)")
    return name


def open_transport(name: str, timeout_s: float) -> Transport:
    """A transport (``direct``, ``aiohttp`` or ``httpx``, as resolved) for the running event loop."""
    return DirectTransport(timeout_s) if name == "direct" else SDKTransport(timeout_s, aiohttp=name == "aiohttp")


class DirectTransport:
    """One aiohttp POST per call, through one session (connection pool) per event loop."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._session = None

    async def post(self, ep: EndpointConfig, path: str, body: dict, api_key: str) -> dict:
        import aiohttp

        if self._session is None:
            # The client's semaphore bounds concurrency, so the connector does not (its default limit is 100).
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        try:
            async with self._session.post(ep.base_url + path, data=json.dumps(body).encode(), headers=headers) as r:
                status, resp_headers, raw = r.status, r.headers, await r.read()
        except asyncio.TimeoutError:  # aiohttp's total timeout (ServerTimeoutError is one of these too)
            raise TransportError(f"timeout after {self.timeout_s}s ({ep.host})")
        except aiohttp.ClientError as e:  # refused, reset, dropped mid-answer
            raise TransportError(f"connection error ({ep.host}): {type(_root_cause(e)).__name__}")
        if status >= 400:
            try:
                err = json.loads(raw)
            except ValueError:
                err = None
            raise HTTPStatusError(status, resp_headers, _body_detail(err, raw.decode("utf-8", "replace")))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise TransportError(f"malformed response body ({ep.host})")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class SDKTransport:
    """The same POST through the openai SDK (on aiohttp or httpx), one ``AsyncOpenAI`` client per endpoint."""

    def __init__(self, timeout_s: float, aiohttp: bool):
        self.timeout_s, self.aiohttp = timeout_s, aiohttp
        self._clients: dict = {}

    def _client(self, ep: EndpointConfig, api_key: str):
        import openai

        c = self._clients.get((ep.base_url, api_key))
        if c is None:
            extra = {"http_client": openai.DefaultAioHttpClient(timeout=self.timeout_s)} if self.aiohttp else {}
            c = openai.AsyncOpenAI(base_url=ep.base_url, api_key=api_key, max_retries=0, timeout=self.timeout_s,
                                   **extra)
            self._clients[(ep.base_url, api_key)] = c
        return c

    async def post(self, ep: EndpointConfig, path: str, body: dict, api_key: str) -> dict:
        import openai

        client = self._client(ep, api_key)
        try:
            # The SDK's generic POST (auth, timeouts, status -> exception mapping) without its typed-param
            # transform and response models.
            return json.loads(await client.post(path, cast_to=str, body=body))
        except openai.APIConnectionError as e:  # APITimeoutError is one of these
            root = _root_cause(e)
            if "Timeout" in type(root).__name__ or isinstance(root, TimeoutError):
                raise TransportError(f"timeout after {self.timeout_s}s ({ep.host})")
            # (The aiohttp transport reports a refused or dropped connection as a "ConnectTimeout".)
            raise TransportError(f"connection error ({ep.host}): {type(root).__name__}")
        except openai.APIStatusError as e:
            detail = _body_detail(getattr(e, "body", None), str(getattr(e, "message", e)))
            raise HTTPStatusError(e.status_code, e.response.headers, detail)
        except (ValueError, UnicodeDecodeError):
            raise TransportError(f"malformed response body ({ep.host})")

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)


def parse_retry_after(headers) -> Optional[float]:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        v = float(ra)
        return max(0.0, v) if math.isfinite(v) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _root_cause(e: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from ...`` chain (what really happened on the socket)."""
    seen = {id(e)}
    while e.__cause__ is not None and id(e.__cause__) not in seen:
        e = e.__cause__
        seen.add(id(e))
    return e


def _body_detail(body, fallback: str) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else ``fallback``."""
    if isinstance(body, dict):
        err = body["error"] if isinstance(body.get("error"), dict) else body
        if err.get("message"):
            return str(err["message"])[:300]
    return fallback[:300]

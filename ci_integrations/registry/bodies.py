"""Bounded reads of response bodies, so a hostile registry or token service cannot make a worker hold a huge body.

Every request the package sends is streamed; nothing calls `.content`, `.text` or `.json()` on a body that has not
been read through here first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import requests
import urllib3

from .errors import RegistryError, error_for_response

# Error bodies are only ever mined for OCI error JSON (a few hundred bytes); the rest is never read.
MAX_ERROR_BODY_BYTES = 64 * 1024
_CHUNK = 64 * 1024
READ_FAILURES = (OSError, urllib3.exceptions.HTTPError, requests.RequestException)


def read_up_to(response: requests.Response, limit: int, *, decode: bool = True) -> tuple[bytes, bool]:
    """Read a streamed body into `response.content`, at most `limit` bytes; returns (body, whether more was there).

    When the body is longer the connection is closed rather than drained. Connection failures propagate.
    """
    if response._content_consumed or response.raw is None:  # already read, or a body-less stand-in
        content = response._content or b""
        return content[:limit], len(content) > limit
    body = bytearray()
    while len(body) <= limit:
        chunk = response.raw.read(min(_CHUNK, limit + 1 - len(body)), decode_content=decode)
        if not chunk:
            break
        body += chunk
    longer = len(body) > limit
    if longer:
        response.close()
        del body[limit:]
    response._content = bytes(body)  # what requests itself stores once a body is read
    response._content_consumed = True
    return response._content, longer


def read_capped(response: requests.Response, limit: int = MAX_ERROR_BODY_BYTES) -> bytes:
    """The first `limit` bytes of a body nobody needs whole (an error, a redirect): the rest is cut, never read.

    Reading a short body to its end lets the connection go back to the pool; a broken connection yields no body.
    """
    try:
        # Not decoded: an error body is only parsed as JSON, and decompressing a hostile one could multiply it.
        body, _ = read_up_to(response, limit, decode=False)
    except READ_FAILURES:
        response.close()
        return b""
    return body


def response_error(response: requests.Response, *, what: str, retry_after: float | None = None) -> RegistryError:
    """The typed error for a refused request: its body read only up to MAX_ERROR_BODY_BYTES, then closed."""
    body = read_capped(response)
    response.close()
    return error_for_response(
        response.status_code,
        body,
        what=what,
        retry_after=retry_after,
        content_type=response.headers.get("Content-Type"),
    )


def raw_reader(response: requests.Response) -> Callable[[memoryview], memoryview]:
    """Fill a buffer from the response body as stored (no decoding), returning the filled part.

    Reads through the underlying http.client response when there is one: readinto saves an allocation and a copy
    per chunk compared with urllib3's read(), which matters at hundreds of MiB per copy.
    """
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    if fp is not None and hasattr(fp, "readinto") and not getattr(raw, "chunked", False):

        def read_into(buffer: memoryview) -> memoryview:
            filled = 0
            while filled < len(buffer):
                n = fp.readinto(buffer[filled:])
                if not n:
                    break
                filled += n
            return buffer[:filled]

        return read_into

    def read_copy(buffer: memoryview) -> memoryview:
        data = raw.read(len(buffer), decode_content=False)
        buffer[: len(data)] = data
        return buffer[: len(data)]

    return read_copy


class SizedBody:
    """A streamed request body of known length: requests sends Content-Length, not chunked encoding."""

    def __init__(self, chunks: Iterator[memoryview], length: int):
        self._chunks = chunks
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[memoryview]:
        return self._chunks

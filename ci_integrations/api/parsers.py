"""The API's JSON parser: bodies are bounded in size (413) and in nesting depth (400).

Python's JSON decoder recurses once per nested array or object, so a small body such as 10,000 `[` raises
RecursionError, which is not a ValueError and surfaced as a 500. Nothing the API accepts nests deeper than a few
levels, so anything deeper than MAX_JSON_DEPTH is refused with a message that says so.
"""

from __future__ import annotations

import io
import operator
import re
from itertools import accumulate, count

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from ci_integrations.api.errors import MAX_BODY_BYTES, PayloadTooLarge

MAX_JSON_DEPTH = 32
TOO_DEEP = (
    f"JSON parse error - arrays and objects are nested more than {MAX_JSON_DEPTH} levels deep; "
    "no field of this API needs that many."
)

# A JSON string, quotes and escapes included. An unterminated one runs to the end of the body (possessively), so the
# scan stays linear: a string that failed to match would be retried from every later quote.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_A_BRACKET = bytes(byte for byte in range(256) if byte not in b"[]{}")
# Opening brackets count 2 and closing ones 0, so the running sum minus the position is the depth (see below).
_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether the arrays and objects in a JSON document nest more than `limit` levels deep.

    Exact for valid JSON. The work is done by C loops (regex, translate, accumulate), not a Python loop per byte, so
    a 1 MiB body of brackets costs a fraction of what decoding it does.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the usual small body cannot nest that deep at all
        return False
    # Brackets inside strings are not structure: drop the strings, then everything that is not a bracket.
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET)
    if len(brackets) <= limit:
        return False
    # After the i-th bracket the depth is (opening brackets so far) - (closing ones) = 2 * openings - i.
    depths = map(operator.sub, accumulate(brackets.translate(_STEP)), count(1))
    return max(depths) > limit


class BoundedJSONParser(JSONParser):
    """JSON bodies up to MAX_BODY_BYTES (else 413, whatever Content-Length claimed) and MAX_JSON_DEPTH levels of
    nesting (else 400)."""

    def parse(self, stream, media_type=None, parser_context=None):
        """The decoded body, once it is known to be small enough and shallow enough."""
        raw = stream.read(MAX_BODY_BYTES + 1) if stream is not None else b""
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        try:
            # Decoded first, so a body that is simply not JSON gets the decoder's own message (line and column).
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        if json_depth_exceeds(raw, MAX_JSON_DEPTH):
            raise ParseError(TOO_DEEP)
        return data

"""The input words: one rule for each kind of text that people and CI type, with the sentence that explains it.

Models, forms, serializers, services and the config reader check a tag, a digest, a name, a check name, a line or a
piece of text, or a URL here, so the same input gets the same answer, and the same explanation, everywhere. Each rule
is a regular expression (`pattern`) in the common subset of Python's and ECMA-262's syntax: the API's OpenAPI schema
states these very patterns, so what the schema calls valid is exactly what the API accepts.

May import: registry.refs (the OCI grammar of tags and digests). Nothing of Django.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from ci_integrations.registry.refs import (
    DIGEST_PATTERN,
    IMAGE_REFERENCE_PATTERN,
    IPV6_PATTERN,
    MAX_REPOSITORY_LENGTH,
    PORT_PATTERN,
    TAG_PATTERN,
)

MAX_URL_LENGTH = 1024
# Unicode's control characters (category Cc: C0, DEL and C1) as a character-class body. Tabs and line breaks are part
# of a text; every other control character (terminal escapes, NUL, C1…) is not.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"
TEXT_WHITESPACE = frozenset("\t\n\r")
_MULTILINE_CONTROL_CHARACTERS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# What str.strip() removes besides control characters, spelled out: `\s` differs between Python and ECMA-262.
_SPACES = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL_RE = re.compile(f"[{CONTROL_CHARACTERS}]")
_MULTILINE_CONTROL_RE = re.compile(f"[{_MULTILINE_CONTROL_CHARACTERS}]")

# Free text as patterns: one line (no control character at all), or several (tabs and line breaks allowed); the
# `_FILLED` forms hold at least one character that is neither a space nor a control character (not blank once
# trimmed).
LINE_PATTERN = f"[^{CONTROL_CHARACTERS}]*"
FILLED_LINE_PATTERN = f"[^{CONTROL_CHARACTERS}]*[^{_SPACES}{CONTROL_CHARACTERS}][^{CONTROL_CHARACTERS}]*"
TEXT_PATTERN = f"[^{_MULTILINE_CONTROL_CHARACTERS}]*"


@dataclass(frozen=True)
class InputRule:
    """One input word: what it is called, what a valid value looks like (`pattern`, which a whole value matches),
    and the sentence that explains a refusal."""

    word: str
    explanation: str
    pattern: str
    sentence: str = "{value!r} is not a valid {word}: {explanation}"
    max_length: int | None = None
    _compiled: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    @property
    def anchored_pattern(self) -> str:
        """The pattern as JSON Schema and ECMA-262 read it: `pattern` matches anywhere unless anchored."""
        return f"^(?:{self.pattern})$"

    def is_valid(self, value) -> bool:
        if not isinstance(value, str) or (self.max_length is not None and len(value) > self.max_length):
            return False
        return bool(self._compiled.fullmatch(value))

    def problem(self, value, *, word: str | None = None) -> str:
        """The sentence for a value that breaks the rule, e.g. "'x!' is not a valid tag: up to 128 …". `word` names
        what the value is where the general word is too vague ("environment" for a name)."""
        return self.sentence.format(value=value, word=word or self.word, explanation=self.explanation)


TAG = InputRule("tag", "up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", TAG_PATTERN)
DIGEST = InputRule(
    "digest",
    "sha256: followed by 64 lowercase hex characters",
    DIGEST_PATTERN,
    sentence="{value!r} is not a {word}: expected {explanation}",
)
# Names of integrations, registries, workflows and environments: DNS-label shaped, so they fit in URLs, hostnames
# and Kubernetes labels.
NAME = InputRule(
    "name",
    "lowercase letters, digits and '-', at most 63 characters",
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    sentence="{word} {value!r} must be {explanation}",
)
LABEL_NAME = InputRule(
    "label name",
    "1 to 63 printable characters",
    f"[^{CONTROL_CHARACTERS}]{{1,63}}",
    sentence="{word} {value!r} must be {explanation}",
)
CHECK_NAME = InputRule(
    "check name",
    "1 to 63 letters, digits, '_' or '-', not starting with '-'",
    r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}",
    sentence="{word} {value!r} must be {explanation}",
)


def control_character(value: str, *, multiline: bool = False) -> str | None:
    """The first control character in `value` that printable text may not hold, or None.

    One-line text (names, labels, tags) holds none; multi-line text (reasons, comments) may hold tabs and line
    breaks. Control characters corrupt logs, terminals and exports.
    """
    found = (_MULTILINE_CONTROL_RE if multiline else _CONTROL_RE).search(value)
    return found.group() if found else None


def control_character_problem(char: str) -> str:
    """The sentence for a control character found by control_character()."""
    return f"remove the control character U+{ord(char):04X}; only printable text is allowed"


# An absolute http(s) URL with a host (build links, check links, webhooks): a scheme, `://`, optional user info, a
# host (a name, an IPv4 address or a bracketed IPv6 one) with an optional port, then an optional path, query and
# fragment of printable, non-space characters.
HTTP_URL = InputRule(
    "URL",
    f"an http(s) URL with a host, at most {MAX_URL_LENGTH} characters",
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]+@)?"
    rf"(?:[A-Za-z0-9._~%!$&'()*+,;=-]+|{IPV6_PATTERN})(?::{PORT_PATTERN})?"
    f"(?:[/?#][^{_SPACES}{CONTROL_CHARACTERS}]*)?",
    max_length=MAX_URL_LENGTH,
)


def is_http_url(value, *, max_length: int = MAX_URL_LENGTH) -> bool:
    """An absolute http(s) URL with a host, of at most `max_length` characters (build links, check links,
    webhooks)."""
    return HTTP_URL.is_valid(value) and len(value) <= max_length


# An image reference as CI writes it, `host[:port]/path[:tag][@digest]`, optionally behind http:// or https:// (where
# the API reads from an outside registry).
IMAGE_SOURCE = InputRule(
    "image reference",
    "host/repository:tag or host/repository@sha256:…, optionally starting with http:// or https://",
    f"(?:https?://)?(?:{IMAGE_REFERENCE_PATTERN})",
    max_length=MAX_REPOSITORY_LENGTH,
)

# RFC 3339 date-times (OpenAPI's `format: date-time`): the calendar and the clock are checked when parsed.
_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_rfc3339(value) -> datetime | None:
    """The moment an RFC 3339 date-time names (always with its zone), or None when `value` is not one. A leap
    second (:60) counts as the second before it."""
    found = _RFC3339_RE.fullmatch(value) if isinstance(value, str) else None
    if not found:
        return None
    year, month, day, hour, minute, second, fraction, utc, sign, zone_hours, zone_minutes = found.groups()
    try:
        if int(zone_hours or 0) > 23 or int(zone_minutes or 0) > 59:
            return None
        offset = timedelta(hours=int(zone_hours or 0), minutes=int(zone_minutes or 0))
        zone = UTC if utc else timezone(-offset if sign == "-" else offset)
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), micro, tzinfo=zone
        )
    except ValueError:
        return None

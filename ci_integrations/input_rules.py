"""The input words: one rule for each kind of text that people and CI type, with the sentence that explains it.

Models, forms, serializers, services and the config reader check a tag, a digest, a name, a check name, a line or a
piece of text, or a URL here, so the same input gets the same answer, and the same explanation, everywhere.

May import: registry.refs (the OCI grammar of tags and digests). Nothing of Django.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ci_integrations.registry.refs import is_valid_digest, is_valid_tag

MAX_URL_LENGTH = 1024
# Tabs and line breaks are part of a text; every other control character (terminal escapes, NUL, C1…) is not.
TEXT_WHITESPACE = frozenset("\t\n\r")


@dataclass(frozen=True)
class InputRule:
    """One input word: what it is called, what a valid value looks like, and the test."""

    word: str
    explanation: str
    test: Callable[[str], bool]
    sentence: str = "{value!r} is not a valid {word}: {explanation}"

    def is_valid(self, value) -> bool:
        return isinstance(value, str) and bool(self.test(value))

    def problem(self, value, *, word: str | None = None) -> str:
        """The sentence for a value that breaks the rule, e.g. "'x!' is not a valid tag: up to 128 …". `word` names
        what the value is where the general word is too vague ("environment" for a name)."""
        return self.sentence.format(value=value, word=word or self.word, explanation=self.explanation)


_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_CHECK_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")

TAG = InputRule("tag", "up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", is_valid_tag)
DIGEST = InputRule(
    "digest",
    "sha256: followed by 64 lowercase hex characters",
    is_valid_digest,
    sentence="{value!r} is not a {word}: expected {explanation}",
)
# Names of integrations, registries, workflows and environments: DNS-label shaped, so they fit in URLs, hostnames
# and Kubernetes labels.
NAME = InputRule(
    "name",
    "lowercase letters, digits and '-', at most 63 characters",
    _NAME_RE.fullmatch,
    sentence="{word} {value!r} must be {explanation}",
)
CHECK_NAME = InputRule(
    "check name",
    "1 to 63 letters, digits, '_' or '-', not starting with '-'",
    _CHECK_NAME_RE.fullmatch,
    sentence="{word} {value!r} must be {explanation}",
)


def control_character(value: str, *, multiline: bool = False) -> str | None:
    """The first control character in `value` that printable text may not hold, or None.

    One-line text (names, labels, tags) holds none; multi-line text (reasons, comments) may hold tabs and line
    breaks. Control characters corrupt logs, terminals and exports.
    """
    for char in value:
        if unicodedata.category(char) == "Cc" and not (multiline and char in TEXT_WHITESPACE):
            return char
    return None


def control_character_problem(char: str) -> str:
    """The sentence for a control character found by control_character()."""
    return f"remove the control character U+{ord(char):04X}; only printable text is allowed"


def is_http_url(value, *, max_length: int = MAX_URL_LENGTH) -> bool:
    """An absolute http(s) URL with a host, of at most `max_length` characters (build links, check links,
    webhooks)."""
    if not isinstance(value, str) or not value or len(value) > max_length or control_character(value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)

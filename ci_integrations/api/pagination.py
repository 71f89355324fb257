"""Cursor pages: how every v1 list is paged, and the envelope the schema describes for it.

A list answers `{"next": url | null, "previous": url | null, "results": [...]}`, newest first. `limit` (1 to
MAX_PAGE_SIZE, default PAGE_SIZE) sets the page size and is refused with a 400 when it is not such a number; `cursor`
comes from `next` or `previous`, and an unknown one is a 404.

To page a new list: answer with `NewestFirst().page(queryset, request, view, SomeOut)`, and describe it with
`api_operation(responses={200: cursor_page(SomeOut)}, parameters=[*PAGE_PARAMETERS, …])`.
"""

from __future__ import annotations

from functools import cache

from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class NewestFirst(CursorPagination):
    """Newest first by id; a malformed `limit` is a 400 rather than silently the default."""

    ordering = ("-id",)
    page_size = PAGE_SIZE
    max_page_size = MAX_PAGE_SIZE
    page_size_query_param = "limit"

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({"limit": f"must be a whole number from 1 to {self.max_page_size}"})
        return int(raw)

    def page(self, queryset, request, view, serializer_class):
        """The paginated answer for `queryset`, each item rendered by `serializer_class`."""
        items = self.paginate_queryset(queryset, request, view=view)
        return self.get_paginated_response(serializer_class(items, many=True).data)


PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="where the page starts: from a previous page's `next` or `previous`"),
    OpenApiParameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
        description=f"items per page (default {PAGE_SIZE})",
    ),
]


@cache
def cursor_page(item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The envelope serializer of a cursor page of `item` (e.g. ArtifactOut → ArtifactPage), one class per item."""
    name = item.__name__.removesuffix("Out") + "Page"
    fields = {
        "next": serializers.URLField(allow_null=True, help_text="the next (older) page, or null on the last one"),
        "previous": serializers.URLField(allow_null=True, help_text="the previous (newer) page, or null on the first"),
        "results": item(many=True),
        "__doc__": f"One cursor page of {item.__name__.removesuffix('Out')} items, newest first.",
        "__module__": __name__,
    }
    return type(name, (serializers.Serializer,), fields)

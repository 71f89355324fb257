"""CI's commit time: accepted with the metadata, checked, and kept in UTC in the one form insights reads."""

from __future__ import annotations

import pytest

from ci_integrations.api.serializers import MetadataIn
from ci_integrations.insights import commit_time_of
from ci_integrations.services.artifacts import clean_metadata
from ci_integrations.services.errors import InvalidInput


def test_a_commit_time_with_a_zone_is_kept_in_utc_with_the_labels():
    cleaned = clean_metadata({"commit_time": "2026-11-30T10:12:00+01:00", "labels": {"team": "shop"}})
    assert cleaned["labels"] == {"team": "shop", "commit_time": "2026-11-30T09:12:00Z"}
    assert commit_time_of(cleaned["labels"]).isoformat() == "2026-11-30T09:12:00+00:00"


def test_a_commit_time_label_is_checked_too_so_an_import_can_pass_it_on():
    assert clean_metadata({"labels": {"commit_time": "2026-11-30T09:12:00.5Z"}})["labels"] == {
        "commit_time": "2026-11-30T09:12:00Z"
    }


@pytest.mark.parametrize("value", ["2026-11-30T09:12:00", "yesterday", "2026-02-31T00:00:00Z", 1700000000])
def test_a_time_without_a_zone_or_not_a_time_is_refused_naming_the_field(value):
    with pytest.raises(InvalidInput) as refused:
        clean_metadata({"commit_time": value})
    assert refused.value.details == {"commit_time": "invalid"}


def test_the_api_accepts_the_key():
    serializer = MetadataIn(data={"commit_time": "2026-11-30T09:12:00Z"})
    assert serializer.is_valid(), serializer.errors

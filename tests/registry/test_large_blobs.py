"""Large layers and dropped streams (issue 15 item 8), through the fault proxy in front of real docker-registry
processes: a source stream cut part way resumes with Range, an upload goes in chunks that resume at the registry's
offset, and a registry's documented layer limit stops a copy before any byte moves.

Sources: OCI distribution spec, "Pushing a blob in chunks" and "Resuming an upload"; RFC 9110 §14.2 and §15.3.7
(Range, 206 Partial Content); Amazon ECR UploadLayerPart (parts of at least 5 MiB but the last); GHCR "Working with
the Container registry" (10 GB per layer); Amazon ECR service quotas (52,000 MiB per layer).
"""

from __future__ import annotations

import pytest
import requests

from ci_integrations.registry import RegistrySpec, copy_image
from ci_integrations.registry.errors import LayerTooLarge
from ci_integrations.registry.providers import provider_for
from tests.registry.conftest import location
from tests.support.images import get_manifest_digest, push_random_image

MIB = 1024 * 1024
LAYER_SIZE = 12 * MIB  # three chunks of at least 5 MiB (5, 5, 2)
LARGE = {"large_blob_threshold": 4 * MIB, "upload_chunk_size": 5 * MIB}
BLOB_GET = r"/v2/team/api/blobs/sha256:"


def _large_image(url: str, size: int = LAYER_SIZE) -> tuple[str, int]:
    """An image with one layer of about `size` bytes; returns its digest and the layer's exact size."""
    digest = push_random_image(url, "team/api", "1.0", layers=1, layer_size=size)
    manifest = requests.get(
        f"{url}/v2/team/api/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    return digest, manifest["layers"][0]["size"]


def _layer_gets(proxy) -> list:
    return [e for e in proxy.requests("GET", BLOB_GET) if e.bytes_down >= MIB or "Range" in e.headers]


def test_a_source_stream_cut_at_90_percent_resumes_with_range_and_moves_each_byte_once(
    registry, other_registry, proxy_factory
):
    """The source drops the connection after 90 % of a large layer: the GET resumes with `Range: bytes=<n>-` at the
    byte it stopped, and the destination receives each byte once (P10: no restart from byte 0)."""
    digest, LAYER = _large_image(registry.url)  # noqa: N806
    source = proxy_factory(registry.url)
    target = proxy_factory(other_registry.url)
    source.add("reset", method="GET", path=BLOB_GET, cut_at=0.9)  # largest blob first: the layer
    lines: list[str] = []

    summary = copy_image(
        location(source.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", **LARGE),
        parallelism=1,
        notify=lines.append,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    gets = _layer_gets(source)
    assert len(gets) == 2 and "Range" not in gets[0].headers
    resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= int(LAYER * 0.9)
    assert gets[1].status == 206 and gets[1].bytes_down == LAYER - resumed_at
    uploaded = sum(e.bytes_up for e in target.requests("PATCH"))
    assert uploaded == LAYER  # not one byte sent twice
    assert summary.bytes_read <= 1.1 * LAYER
    assert any("resuming from there" in line and source.host in line for line in lines)


def test_a_server_that_ignores_range_is_read_again_and_skipped_without_restarting_the_upload(
    registry, other_registry, proxy_factory
):
    """A server (or CDN) that answers a Range request with 200 and the whole body: the client sees it did not honour
    the range, drops the bytes it already has, and the upload goes on where it was."""
    digest, LAYER = _large_image(registry.url)  # noqa: N806
    source = proxy_factory(registry.url)
    target = proxy_factory(other_registry.url)
    source.add("reset", method="GET", path=BLOB_GET, cut_at=0.5)
    source.add("ignore_range", method="GET", path=BLOB_GET, times=None)
    lines: list[str] = []

    copy_image(
        location(source.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", **LARGE),
        parallelism=1,
        notify=lines.append,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    gets = _layer_gets(source)
    assert len(gets) == 2 and gets[1].status == 200 and gets[1].bytes_down == LAYER
    assert sum(e.bytes_up for e in target.requests("PATCH")) == LAYER
    assert len(target.requests("POST")) == 2  # one upload session per blob (layer, config): nothing started again
    assert any("ignored the Range" in line for line in lines)


def test_a_large_layer_goes_up_in_chunks_of_at_least_5_mib_with_content_range(registry, other_registry, proxy_factory):
    """Chunked upload as the distribution spec describes it: PATCH with `Content-Range: <start>-<end>`, chunks of at
    least 5 MiB but the last (ECR's UploadLayerPart minimum), then a PUT with the digest and no body."""
    digest, LAYER = _large_image(registry.url)  # noqa: N806
    target = proxy_factory(other_registry.url)

    copy_image(location(registry.url, "team/api", "1.0"), location(target.url, "prod/api", "1.0", **LARGE))

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    ranges = [e.headers["Content-Range"] for e in target.requests("PATCH")]
    assert ranges == [f"0-{5 * MIB - 1}", f"{5 * MIB}-{10 * MIB - 1}", f"{10 * MIB}-{LAYER - 1}"]
    puts = target.requests("PUT", r"/blobs/uploads/.*digest=")
    assert sorted(e.bytes_up for e in puts)[0] == 0 and len(puts) == 2  # the layer's closing PUT; the config's


def test_an_upload_cut_in_the_second_chunk_resumes_from_the_offset_the_registry_reports(
    registry, other_registry, proxy_factory
):
    """The connection drops during the second PATCH: the client asks the session where it stands (GET, `Range`
    header) and resends from there, in the same session; the first chunk is not sent again."""
    digest, LAYER = _large_image(registry.url)  # noqa: N806
    target = proxy_factory(other_registry.url)
    target.add("reset", method="PATCH", path=r"/blobs/uploads/", after=1)
    lines: list[str] = []

    copy_image(
        location(registry.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", **LARGE),
        notify=lines.append,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    patches = target.requests("PATCH")
    assert [e.headers["Content-Range"] for e in patches] == [
        f"0-{5 * MIB - 1}",
        f"{5 * MIB}-{10 * MIB - 1}",  # cut
        f"{5 * MIB}-{10 * MIB - 1}",  # resent from the registry's offset
        f"{10 * MIB}-{LAYER - 1}",
    ]
    assert len(target.requests("GET", r"/blobs/uploads/")) == 1  # the status query
    assert len(target.requests("POST")) == 2  # one session per blob (layer, config): the layer's was not replaced
    assert any(f"holds {5 * MIB} of {LAYER} bytes" in line for line in lines)


def test_a_layer_over_the_destinations_limit_fails_before_any_byte_moves(registry, other_registry, proxy_factory):
    """Check a registry's limits before moving bytes, and say which limit: here the registry's max_layer_bytes."""
    push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=2 * MIB)
    target = proxy_factory(other_registry.url)

    with pytest.raises(LayerTooLarge, match=r"takes layers of at most 1048576 bytes \(its max_layer_bytes setting\)"):
        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(target.url, "prod/api", "1.0", max_layer_bytes=MIB),
        )

    assert target.requests("POST") == [] and target.requests("PUT") == [] and target.requests("PATCH") == []


@pytest.mark.parametrize(
    ("provider", "url", "limit", "name"),
    [
        ("generic", "https://ghcr.io", 10 * 1000**3, "GHCR's limit of 10 GB per layer"),
        ("ecr", "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com", 52_000 * MIB, "ECR's limit of 52,000 MiB"),
    ],
)
def test_documented_layer_limits_are_known_per_registry(provider, url, limit, name):
    """GHCR documents 10 GB per layer; ECR's service quotas 52,000 MiB per layer."""
    found = provider_for(RegistrySpec(provider=provider, url=url)).layer_limit(RegistrySpec(provider=provider, url=url))
    assert found is not None and found[0] == limit and found[1].startswith(name)


def test_a_registry_without_a_documented_limit_has_none():
    spec = RegistrySpec(provider="generic", url="https://registry.example")
    assert provider_for(spec).layer_limit(spec) is None


def test_a_registry_that_refuses_chunked_uploads_gets_the_layer_in_one_put(registry, other_registry, proxy_factory):
    """Not every registry takes PATCH chunks (some answer 400 or 405 to a Content-Range): the first refusal sends
    the blob, and every large blob after it, as one monolithic PUT (the distribution spec's other upload form)."""
    digest, LAYER = _large_image(registry.url)  # noqa: N806
    target = proxy_factory(other_registry.url)
    target.add("status", method="PATCH", path=r"/blobs/uploads/", status=405, body=b"", times=None)
    lines: list[str] = []

    copy_image(
        location(registry.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", **LARGE),
        notify=lines.append,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert len(target.requests("PATCH")) == 1  # asked once
    assert max(e.bytes_up for e in target.requests("PUT", r"/blobs/uploads/")) == LAYER
    assert any("refused a chunked upload" in line for line in lines)


def test_a_registry_that_cannot_say_its_offset_gets_the_blob_again_in_a_new_session(
    registry, other_registry, proxy_factory
):
    """A cut chunk on a registry that does not answer GET on an upload session: the blob starts again from a new
    session rather than failing the copy."""
    digest, _ = _large_image(registry.url)
    target = proxy_factory(other_registry.url)
    target.add("reset", method="PATCH", path=r"/blobs/uploads/", after=1)
    target.add("status", method="GET", path=r"/blobs/uploads/", status=405, body=b"", times=None)
    lines: list[str] = []

    copy_image(
        location(registry.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", **LARGE),
        notify=lines.append,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert len(target.requests("POST")) == 3  # the layer twice, the config once
    assert any("did not say how much" in line for line in lines)


def test_a_smaller_layer_cut_mid_stream_resumes_inside_the_same_put(registry, other_registry, proxy_factory):
    """Under the large-blob threshold the upload is one streamed PUT; a source that breaks off is asked again from
    the next byte while that PUT waits, so the upload neither restarts nor opens a new session."""
    digest, size = _large_image(registry.url, 24 * MIB)
    source = proxy_factory(registry.url)
    target = proxy_factory(other_registry.url)
    source.add("reset", method="GET", path=BLOB_GET, cut_at=0.6)

    copy_image(
        location(source.url, "team/api", "1.0"),
        location(target.url, "prod/api", "1.0", large_blob_threshold=64 * MIB),
        parallelism=1,
    )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    gets = _layer_gets(source)
    assert len(gets) == 2 and gets[1].status == 206 and "Range" in gets[1].headers
    assert len(target.requests("POST")) == 2 and target.requests("PATCH") == []  # a session per blob, no retry
    assert max(e.bytes_up for e in target.requests("PUT", r"/blobs/uploads/")) == size  # each byte sent once

"""Public gcr.io images without credentials (issue 15 item 5): a `gar` registry with nothing stored, on a machine
without Application Default Credentials, pulls anonymously. gcr.io's token service is emulated in front of a real
docker-registry; google-auth is faked at its boundary (google.auth.default).

Sources: Google Cloud, "Container Registry: pulling public images" (no authentication needed for public images
such as gcr.io/distroless/static); google-auth, google.auth.default raising DefaultCredentialsError when no
credentials are found.
"""

from __future__ import annotations

import json

import google.auth
import pytest
from google.auth.exceptions import DefaultCredentialsError

from ci_integrations.registry import RegistrySpec, copy_image
from ci_integrations.registry.errors import AuthenticationError
from ci_integrations.registry.providers import gar
from tests.registry.conftest import FAST, location
from tests.support.images import get_manifest_digest, push_random_image


class GcrTokens:
    """gcr.io's auth as a client sees it: bearer-only /v2/, and /v2/token handing anonymous pull tokens."""

    def __init__(self):
        self.host = ""
        self.token_requests: list[dict] = []

    def __call__(self, method, path, headers, body):
        if path.startswith("/v2/token"):
            self.token_requests.append(headers)
            return 200, {"Content-Type": "application/json"}, json.dumps({"token": "anonymous-pull"}).encode()
        if path.startswith("/v2") and headers.get("Authorization") != "Bearer anonymous-pull":
            challenge = f'Bearer realm="http://{self.host}/v2/token",service="gcr.io"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}'
        return None


@pytest.fixture
def no_default_credentials(monkeypatch):
    asked = []

    def absent(*args, **kwargs):
        asked.append(1)
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", absent)
    gar._credentials.clear()
    yield asked
    gar._credentials.clear()


def test_a_public_gcr_image_is_pulled_anonymously_without_any_credentials(
    registry, other_registry, proxy_factory, no_default_credentials
):
    digest = push_random_image(registry.url, "distroless/static", "nonroot")
    tokens = GcrTokens()
    gcr = proxy_factory(registry.url, intercept=tokens)
    tokens.host = gcr.host
    source = RegistrySpec("gar", gcr.url, options=FAST)

    copy_image(location(source, "distroless/static", "nonroot"), location(other_registry.url, "base/static", "1"))
    copy_image(location(source, "distroless/static", "nonroot"), location(other_registry.url, "base/static", "2"))

    assert get_manifest_digest(other_registry.url, "base/static", "2") == digest
    assert tokens.token_requests and all("Authorization" not in h for h in tokens.token_requests)
    assert len(no_default_credentials) == 1  # the absence is remembered: no metadata-server probe per request


def test_stored_credentials_that_do_not_work_are_not_replaced_by_anonymous_access(no_default_credentials):
    spec = RegistrySpec("gar", "https://gcr.io", options=FAST, credentials={"service_account_json": "{not json"})
    with pytest.raises(ValueError):
        gar.GarProvider().credential_source(spec)()


def test_push_credentials_need_the_portals_own_google_credentials(no_default_credentials):
    from ci_integrations.registry import PushScope

    spec = RegistrySpec("gar", "https://europe-docker.pkg.dev", options=FAST)
    with pytest.raises(AuthenticationError, match="none are stored or found"):
        gar.GarProvider().push_credentials(spec, PushScope("p/r/app", service_account="push@p.iam.gserviceaccount.com"))

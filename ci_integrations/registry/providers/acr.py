"""Azure Container Registry.

Auth: admin user or service principal work as plain Basic. Otherwise an Entra ID token from azure-identity is
exchanged at /oauth2/exchange for an ACR refresh token, which /oauth2/token turns into scoped access tokens.
Push credentials are such an access token for `repository:<repo>:pull,push` (the generic token path: ACR's /v2/
challenge names /oauth2/token), never the refresh token, which is good for the whole registry.
Fast path: server-side `import_image` from another registry ACR can reach (another ACR by resource id, or any
https registry with short-lived credentials), so the bytes never pass through the worker.
"""

from __future__ import annotations

import logging
import threading
import time

import requests

from .. import budget as budgets
from ..auth import Authenticator, BasicCredentials, CredentialSource, TokenFetcher, fetch_docker_token, token_answer
from ..client import Manifest
from ..errors import (
    AuthenticationError,
    CopyStopped,
    DeadlineExceeded,
    ProtocolError,
    RegistryError,
    TagConflict,
    TransientError,
    cut,
    redact,
    remember_secret,
)
from ..refs import ImageLocation, RegistrySpec
from ..transport import RetryNotice, Transport, announce, describe_exception
from . import Provider, provider_for, timeouts

# ACR import's documented limits, and how long and how chattily the portal waits for one.
IMPORT_MAX_MANIFESTS = 50
PUBLIC_IMPORT_MAX_LAYER_BYTES = 2 * 1024**3
IMPORT_TIMEOUT_SECONDS = 300.0
IMPORT_PROGRESS_SECONDS = 15.0
IMPORT_POLL_SECONDS = 1.0
NULL_USER = "00000000-0000-0000-0000-000000000000"  # ACR's username for refresh-token Basic auth
ACR_AUDIENCE = "https://containerregistry.azure.net/.default"
ARM_AUDIENCE = "https://management.azure.com/.default"
ENTRA_AUDIENCES = (ACR_AUDIENCE, ARM_AUDIENCE)  # in the order asked
log = logging.getLogger(__name__)
_refresh_tokens: dict[tuple, tuple[str, float]] = {}
_lock = threading.Lock()


def azure_credential(spec: RegistrySpec):
    """A service principal from stored credentials, else DefaultAzureCredential (managed identity, CLI, env)."""
    creds = spec.credentials or {}
    if creds.get("client_id") and creds.get("client_secret"):
        remember_secret(creds["client_secret"])
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(
            tenant_id=creds.get("tenant_id") or spec.options["tenant_id"],
            client_id=creds["client_id"],
            client_secret=creds["client_secret"],
        )
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def management_client(spec: RegistrySpec):
    from azure.mgmt.containerregistry import ContainerRegistryManagementClient

    return ContainerRegistryManagementClient(azure_credential(spec), spec.options["subscription_id"])


def fetch_acr_token(
    session: requests.Session,
    realm: str,
    service: str,
    scopes: tuple[str, ...],
    credentials: BasicCredentials | None,
    timeout: tuple,
) -> tuple[str, float]:
    """ACR's /oauth2/token: a refresh token (as Basic password of the null user) for a scoped access token."""
    if credentials is None or credentials.username != NULL_USER:
        return fetch_docker_token(session, realm, service, scopes, credentials, timeout)
    data = {"grant_type": "refresh_token", "service": service, "scope": " ".join(scopes)}
    data["refresh_token"] = credentials.password
    try:
        response = session.post(realm, data=data, timeout=timeout, stream=True)
    except requests.RequestException as exc:
        raise TransientError(f"ACR token request failed: {type(exc).__name__}") from None
    token = token_answer(response, what="ACR /oauth2/token").get("access_token")
    if not token:
        raise ProtocolError("ACR /oauth2/token answered no access_token")
    remember_secret(token)
    return token, 300.0  # ACR access tokens live 75 minutes; 5 minutes of reuse is plenty per copy


class AcrProvider(Provider):
    name = "acr"

    def credential_source(self, spec: RegistrySpec) -> CredentialSource | None:
        creds = spec.credentials or {}
        if creds.get("username") and creds.get("password"):
            return super().credential_source(spec)  # admin user or service principal id/secret
        return lambda refresh=False: BasicCredentials(NULL_USER, self.refresh_token(spec, refresh=refresh)[0])

    def token_fetcher(self, spec: RegistrySpec) -> TokenFetcher:
        return fetch_acr_token

    def refresh_token(self, spec: RegistrySpec, *, refresh: bool = False) -> tuple[str, float]:
        """An ACR refresh token from an Entra token, cached until shortly before the Entra token expires.

        The Entra token is asked for ACR's own audience first: a registry under the built-in policy "Container
        registries should have ARM audience token authentication disabled" (part of the Azure Landing Zone
        guardrails) takes only those. Older clouds and registries take only the ARM audience: asked second.
        Source: Microsoft Learn, "Azure Container Registry authentication with Microsoft Entra ID: ARM audience
        tokens" (az acr config authentication-as-arm).
        """
        endpoint = self.endpoint(spec)
        creds = spec.credentials or {}
        key = (endpoint.host, creds.get("client_id"), creds.get("tenant_id"))
        with _lock:
            cached = _refresh_tokens.get(key)
        if cached and not refresh and cached[1] - 300 > time.time():
            return cached
        credential = azure_credential(spec)
        refused: list[str] = []
        for audience in ENTRA_AUDIENCES:
            try:
                fresh = self._exchange(spec, credential, audience)
            except AuthenticationError as exc:
                refused.append(f"{audience}: {exc.message}")
                continue
            with _lock:
                _refresh_tokens[key] = fresh
            return fresh
        raise AuthenticationError(f"{endpoint.host} took no Entra token for either audience ({'; '.join(refused)})")

    def _exchange(self, spec: RegistrySpec, credential, audience: str) -> tuple[str, float]:
        """An Entra token for `audience`, exchanged at /oauth2/exchange for an ACR refresh token and its expiry.

        Sent through a session like every other registry call: the registry's `ca_bundle` / `verify_tls`, the
        environment's proxies, the destination guard and the current time budget all apply.
        """
        endpoint = self.endpoint(spec)
        creds = spec.credentials or {}
        try:
            entra = budgets.bounded(
                lambda: credential.get_token(audience), doing="an Entra token", host="login.microsoftonline.com"
            )
        except DeadlineExceeded:
            raise
        except Exception as exc:  # azure-identity's ClientAuthenticationError and kin; the next audience may work
            raise AuthenticationError(f"no Entra token: {cut(redact(str(exc)), 300)}") from None
        remember_secret(entra.token)
        data = {"grant_type": "access_token", "service": endpoint.host, "access_token": entra.token}
        tenant = creds.get("tenant_id") or spec.options.get("tenant_id")
        if tenant:
            data["tenant"] = tenant
        transport = Transport(
            endpoint.base_url,
            Authenticator(endpoint.host),
            verify=endpoint.verify,
            guard=spec.guard,
            timeouts=timeouts(spec.options),
        )
        try:
            response = transport.session().post(
                f"{endpoint.base_url}/oauth2/exchange",
                data=data,
                timeout=transport.timeouts.for_call(False),
                stream=True,
                allow_redirects=False,
            )
            token = token_answer(response, what="ACR /oauth2/exchange").get("refresh_token")
        except requests.RequestException as exc:
            raise TransientError(f"ACR token exchange failed: {describe_exception(exc)}") from None
        except RegistryError as error:
            if error.status in (400, 401) and not isinstance(error, AuthenticationError):
                raise AuthenticationError(error.message, status=error.status) from None
            raise
        finally:
            transport.close()
        if not token:
            raise ProtocolError("ACR /oauth2/exchange answered no refresh_token")
        remember_secret(token)
        # ACR refresh tokens live 3 hours; never trust them longer than the Entra token behind them.
        return token, min(float(entra.expires_on), time.time() + 3 * 3600)

    def registry_name(self, spec: RegistrySpec) -> str:
        return spec.options.get("registry_name") or self.host(spec).split(".")[0].split(":")[0]

    def resource_id(self, spec: RegistrySpec) -> str:
        options = spec.options
        return (
            f"/subscriptions/{options['subscription_id']}/resourceGroups/{options['resource_group']}"
            f"/providers/Microsoft.ContainerRegistry/registries/{self.registry_name(spec)}"
        )

    def fast_copy(
        self, src: ImageLocation, dst: ImageLocation, manifest: Manifest, *, notify: RetryNotice | None = None
    ) -> str | None:
        """import_image into this ACR from another registry it can reach; same-registry copies mount instead.

        ACR's documented import limits are checked first (IMPORT_MAX_MANIFESTS manifests; layers of at most
        PUBLIC_IMPORT_MAX_LAYER_BYTES from a public registry): an image over them goes the plain way. The import
        is waited for at most `import_timeout` seconds (and never past the copy's deadline), with a line to the
        promotion's log every IMPORT_PROGRESS_SECONDS; one that fails or runs out of time falls back to the plain
        copy. Source: Microsoft Learn, "Import container images to a container registry" (limitations).
        """
        options = dst.registry.options
        if not (options.get("subscription_id") and options.get("resource_group")) or not options.get(
            "import_images", True
        ):
            return None
        if self.same_registry(src.registry, dst.registry) or ":" in dst.reference:
            return None
        from azure.mgmt.containerregistry.models import ImportImageParameters, ImportSource, ImportSourceCredentials

        source_image = f"{src.repository}@{manifest.digest}"
        src_options = src.registry.options
        public = False
        if src.registry.provider == "acr" and src_options.get("subscription_id") and src_options.get("resource_group"):
            source = ImportSource(resource_id=self.resource_id(src.registry), source_image=source_image)
        elif src.registry.url.startswith("https://"):
            # ACR's servers pull from the source on our behalf, so they get the portal's own (pull) login for it.
            login = provider_for(src.registry).login_credentials(src.registry)
            public = not (login and login.password)
            credentials = None if public else ImportSourceCredentials(username=login.username, password=login.password)
            source = ImportSource(
                registry_uri=provider_for(src.registry).host(src.registry),
                source_image=source_image,
                credentials=credentials,
            )
        else:
            return None  # ACR cannot reach plain-HTTP or private-loopback registries
        over = import_limit_problem(manifest, public=public)
        if over:
            _tell(notify, f"ACR import of {source_image} skipped: {over}; copying through the portal instead")
            return None
        parameters = ImportImageParameters(
            source=source, target_tags=[f"{dst.repository}:{dst.reference}"], mode="Force"
        )
        client = management_client(dst.registry)
        seconds = float(options.get("import_timeout", IMPORT_TIMEOUT_SECONDS))
        budget = budgets.current_budget()
        if budget is not None:
            seconds = budget.cap(seconds)
        what = f"ACR import of {source_image} into {self.host(dst.registry)}/{dst.repository}:{dst.reference}"
        _tell(notify, f"{what}: started (waiting up to {seconds:.0f} s)")
        try:
            poller = client.registries.begin_import_image(
                options["resource_group"], self.registry_name(dst.registry), parameters
            )
            wait_for_import(poller, seconds=seconds, what=what, notify=notify)
        except (CopyStopped, DeadlineExceeded):
            raise
        except Exception as exc:
            text = str(getattr(exc, "message", "") or exc)
            if "locked" in text.lower() or "write" in text.lower() and "disabled" in text.lower():
                raise TagConflict(f"{dst} is locked in ACR and cannot be moved: {cut(text, 200)}") from None
            _tell(notify, f"{what}: failed ({cut(redact(text), 200)}); copying through the portal instead")
            raise
        return "acr-import"


def import_limit_problem(manifest: Manifest, *, public: bool) -> str:
    """What makes `manifest` one ACR import will not take ("" when nothing does): more than IMPORT_MAX_MANIFESTS
    manifests, or (from a public registry) a layer over PUBLIC_IMPORT_MAX_LAYER_BYTES. The layers of an index's
    children are not fetched for this (each would count as a pull on Docker Hub): such an import that fails falls
    back all the same."""
    if manifest.is_index:
        count = len(manifest.children()) + 1
        if count > IMPORT_MAX_MANIFESTS:
            return f"{count} manifests, over ACR import's limit of {IMPORT_MAX_MANIFESTS}"
        return ""
    if public:
        largest = max((blob.size for blob in manifest.blobs()), default=0)
        if largest > PUBLIC_IMPORT_MAX_LAYER_BYTES:
            return f"a layer of {largest} bytes, over ACR import's limit of 2 GiB per layer from a public registry"
    return ""


def wait_for_import(poller, *, seconds: float, what: str, notify: RetryNotice | None) -> None:
    """Wait for an import's long-running operation: a progress line every IMPORT_PROGRESS_SECONDS, the copy's
    budget checked between polls (a cancel stops the wait), TransientError after `seconds`."""
    started = time.monotonic()
    next_line = started + IMPORT_PROGRESS_SECONDS
    while not poller.done():
        budgets.check(what)
        now = time.monotonic()
        if now - started >= seconds:
            raise TransientError(f"{what}: not finished after {seconds:.0f} s (status {poller.status()})")
        if now >= next_line:
            _tell(notify, f"{what}: still running after {now - started:.0f} s (status {poller.status()})")
            next_line = now + IMPORT_PROGRESS_SECONDS
        budgets.pause(min(IMPORT_POLL_SECONDS, max(0.01, seconds - (now - started))), doing=what)
    poller.result()  # raises the operation's error, if it failed
    _tell(notify, f"{what}: finished in {time.monotonic() - started:.1f} s")


def _tell(notify: RetryNotice | None, line: str) -> None:
    announce(notify, line, logger=log)

"""Settings, read from the environment.

Development needs nothing set: with no SECRET_KEY in the environment the portal runs in development mode (DEBUG on,
SQLite under var/, built-in development keys). Production sets DEBUG=0 (the Docker image does) or a SECRET_KEY, and
then refuses to start unless SECRET_KEY, P2P_FERNET_KEYS and P2P_TOKEN_PEPPERS are all given real values.
"""

import hashlib
import ipaddress
import os
from base64 import urlsafe_b64encode
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from p2p_portal.client_address import trusted_proxy_networks

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("P2P_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_whole_number(name: str, default: int) -> int:
    """A whole number greater than 0 from the environment (unset or empty: the default), else ImproperlyConfigured."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit() and int(value) > 0):
        raise ImproperlyConfigured(f"{name} is {value!r}: expected a whole number greater than 0.")
    return int(value)


def env_host_patterns(name: str) -> list[str]:
    """Comma-separated host names from the environment, each optionally `*.`-prefixed (any subdomain) and with an
    optional `:port` (without one, any port); lower-cased. An entry that is not a host stops start-up naming it."""
    patterns = []
    for entry in env_list(name):
        parts = urlsplit(f"//{entry}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        host = (parts.hostname or "") if parts else ""
        bare = host[2:] if host.startswith("*.") else host
        if not bare or parts.path or parts.username or not all(c.isalnum() or c in ".-:" for c in bare):
            raise ImproperlyConfigured(f"{name}: {entry!r} is not a host name, `*.domain` or host:port.")
        patterns.append(entry.strip().lower())
    return patterns


def development_key(purpose: str) -> str:
    """A fixed, public key for development only; production refuses to start with it."""
    return urlsafe_b64encode(hashlib.sha256(f"p2p-portal-development-{purpose}".encode()).digest()).decode()


DEBUG = env_bool("DEBUG", default="SECRET_KEY" not in os.environ)
SECRET_KEY = os.environ.get("SECRET_KEY") or (development_key("secret-key") if DEBUG else "")
# Comma-separated Fernet keys, newest first: the first encrypts, all decrypt (rotate by prepending a key).
P2P_FERNET_KEYS = env_list("P2P_FERNET_KEYS") or ([development_key("fernet")] if DEBUG else [])
# Comma-separated "id=pepper" pairs, current first: new tokens use the first, old ones keep verifying.
P2P_TOKEN_PEPPERS = env_list("P2P_TOKEN_PEPPERS") or ([f"dev={development_key('pepper')}"] if DEBUG else [])

if not DEBUG:
    missing = [
        name
        for name, value in (
            ("SECRET_KEY", SECRET_KEY),
            ("P2P_FERNET_KEYS", P2P_FERNET_KEYS),
            ("P2P_TOKEN_PEPPERS", P2P_TOKEN_PEPPERS),
        )
        if not value
    ]
    if missing:
        raise ImproperlyConfigured(f"Production settings need {', '.join(missing)} in the environment.")
    if SECRET_KEY == development_key("secret-key") or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("SECRET_KEY must be a real secret of at least 50 characters.")
    if development_key("fernet") in P2P_FERNET_KEYS:
        raise ImproperlyConfigured("P2P_FERNET_KEYS holds the public development key; generate a real one.")
    if any(pepper.partition("=")[2] == development_key("pepper") for pepper in P2P_TOKEN_PEPPERS):
        raise ImproperlyConfigured("P2P_TOKEN_PEPPERS holds the public development pepper; generate a real one.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here (no CDN)
    "django_rq",
    "django_htmx",
    "axes",
    "ci_integrations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "p2p_portal.middleware.RequestIdMiddleware",
    "p2p_portal.logging_json.RequestLogContextMiddleware",
    "p2p_portal.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "p2p_portal.urls"
WSGI_APPLICATION = "p2p_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "ci_integrations.context_processors.emergency_stop",
            ],
        },
    },
]


def database(url: str) -> dict:
    """A DATABASES entry for `url`, with the options this portal runs PostgreSQL and SQLite with."""
    config = dj_database_url.parse(url, conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")))
    if config["ENGINE"] == "django.db.backends.postgresql" and env_bool("DATABASE_PREPARED_STATEMENTS", default=True):
        # Server-side parameters, and statements prepared on their second use in a connection: PostgreSQL then skips
        # parsing and planning the queries every API request repeats (half its CPU on the register endpoint). Set
        # DATABASE_PREPARED_STATEMENTS=0 behind a pooler that cannot keep prepared statements (PgBouncer in
        # transaction mode before 1.21).
        config["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 2}
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # SQLite serialises writers; wait for the lock instead of failing when web and worker write together.
        config["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
        # The database file's folder must exist before the first connection (var/ on a fresh clone, before `make`).
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    return config


DATABASES = {"default": database(os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'p2p_portal.sqlite3'}")}
# Two roles on PostgreSQL (docs/configuration.md#the-database-roles): `manage.py migrate` connects as the tables'
# owner from DATABASE_MIGRATE_URL, everything else as DATABASE_URL's role, which migrate grants P2P_APP_DB_ROLE's
# privileges: SELECT and INSERT only on the audit log. Unset: one role for both, as in development.
DATABASE_MIGRATE = database(os.environ["DATABASE_MIGRATE_URL"]) if os.environ.get("DATABASE_MIGRATE_URL") else None
P2P_APP_DB_ROLE = os.environ.get("P2P_APP_DB_ROLE", "").strip()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Imports stop themselves after this many seconds and end failed. Each import job gets RQ's job_timeout from it plus
# a grace (services/background.py); the imports queue's default below, with the same grace, only matters for a job
# enqueued some other way.
P2P_IMPORT_TIMEOUT = env_whole_number("P2P_IMPORT_TIMEOUT", 1800)
# Runs of one import (each worker death or kill costs one); the reconciler fails an import whose runs are spent.
P2P_IMPORT_MAX_ATTEMPTS = env_whole_number("P2P_IMPORT_MAX_ATTEMPTS", 3)
P2P_IMPORT_ALLOWED_HOSTS = env_host_patterns("P2P_IMPORT_ALLOWED_HOSTS")
# Imports have a queue of their own, served by a worker of their own (Procfile), so a slow outside registry can never
# hold up a promotion or a rollback.
RQ_QUEUES = {
    "promotions": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600},
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "imports": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": P2P_IMPORT_TIMEOUT + 60},
}
# Signed checkpoints of the audit chain's head (docs/configuration.md#audit-checkpoints). No signing key: off.
# The private key (base64 of a 32-byte Ed25519 seed, or PEM) lives only in the environment, never in the database.
P2P_AUDIT_SIGNING_KEY = os.environ.get("P2P_AUDIT_SIGNING_KEY", "")
# Public keys (base64) of earlier signing keys, so checkpoints signed before a key rotation keep verifying.
P2P_AUDIT_PUBLIC_KEYS = env_list("P2P_AUDIT_PUBLIC_KEYS")
# Where each checkpoint is written as a new file (mount storage the database's users cannot change); empty: nowhere.
P2P_AUDIT_CHECKPOINT_DIR = os.environ.get("P2P_AUDIT_CHECKPOINT_DIR", "")
# A URL each checkpoint is POSTed to as JSON (a log archive, a transparency service); empty: none.
P2P_AUDIT_CHECKPOINT_WEBHOOK = os.environ.get("P2P_AUDIT_CHECKPOINT_WEBHOOK", "")
P2P_AUDIT_CHECKPOINT_SECONDS = env_whole_number("P2P_AUDIT_CHECKPOINT_SECONDS", 300)
# The audit-verify API walks at most this many entries after the newest checkpoint; beyond that it answers with the
# last background verification and queues a new one.
P2P_AUDIT_VERIFY_MAX_ENTRIES = env_whole_number("P2P_AUDIT_VERIFY_MAX_ENTRIES", 20000)

# The portal's key for the evidence of each promotion (docs/configuration.md#evidence-of-each-promotion): a file
# holding an unencrypted PEM private key, ECDSA P-256 (or Ed25519). Empty: no evidence is written.
P2P_EVIDENCE_KEY_FILE = os.environ.get("P2P_EVIDENCE_KEY_FILE", "")

# A sigstore trusted root (JSON, as `cosign trusted-root create` or sigstore's TUF repository give it) against which
# keyless signatures of `require_signature.keyless` are verified, offline. Empty: keyless signatures are refused.
P2P_SIGSTORE_TRUSTED_ROOT = os.environ.get("P2P_SIGSTORE_TRUSTED_ROOT", "")

# A running promotion whose heartbeat is older than this is taken to have lost its worker.
# Seconds between scheduler passes (auto steps whose soak or freeze ended, scheduled promotions, approval expiry).
P2P_SCHEDULER_SECONDS = env_whole_number("P2P_SCHEDULER_SECONDS", 30)
# Hours a promotion may wait for its approvers before they are reminded by email.
P2P_REMINDER_HOURS = env_whole_number("P2P_REMINDER_HOURS", 24)

# Email (services/emails.py): sent through EMAIL_HOST when it is set, and not at all when it is not, unless
# P2P_EMAIL_CONSOLE is on (make run's demo), which prints each message where the worker logs instead.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip()
EMAIL_PORT = env_whole_number("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = 15
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "").strip() or "P2P Portal <p2p-portal@localhost>"
P2P_EMAIL_CONSOLE = env_bool("P2P_EMAIL_CONSOLE", default=False) and not EMAIL_HOST
if P2P_EMAIL_CONSOLE:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
# Links in emails and chat messages point here (the portal's address as people reach it, without a trailing slash).
P2P_BASE_URL = os.environ.get("P2P_BASE_URL", "").strip().rstrip("/") or ("http://127.0.0.1:8000" if DEBUG else "")
if EMAIL_HOST and not P2P_BASE_URL:
    raise ImproperlyConfigured("EMAIL_HOST is set but P2P_BASE_URL is not: emails need the portal's address for links.")
P2P_HEARTBEAT_STALE_AFTER = timedelta(seconds=int(os.environ.get("P2P_HEARTBEAT_STALE_SECONDS", "120")))
P2P_COPY_PARALLELISM = int(os.environ.get("P2P_COPY_PARALLELISM", "6"))
# How long the registry part of a diff (config, layers, SBOM, vulnerabilities) is kept for a digest pair: an SBOM
# or a scan attached after the push shows once this has passed.
P2P_DIFF_CACHE_SECONDS = env_whole_number("P2P_DIFF_CACHE_SECONDS", 3600)
# Seconds one promotion's copy may take in all; unset: 600 s plus a second per 5 MiB to move (at most 3540 s).
P2P_COPY_DEADLINE = env_whole_number("P2P_COPY_DEADLINE", 0) or None
# Seconds a web request (registration, preflight, push credentials) waits for a registry, all its calls together.
P2P_REGISTRY_WEB_TIMEOUT = env_whole_number("P2P_REGISTRY_WEB_TIMEOUT", 10)
# CI tokens expire: this is both their default lifetime and the longest one can be given (in days).
P2P_CI_TOKEN_MAX_AGE = timedelta(days=env_whole_number("P2P_CI_TOKEN_MAX_AGE", 90))
# CI's OIDC token exchange (POST /api/v1/auth/oidc/): minutes an exchanged CI token lives at most (never past the ID
# token's own expiry), and how long an issuer's discovery document and keys are kept before they are fetched again.
P2P_OIDC_CI_TOKEN_MINUTES = env_whole_number("P2P_OIDC_CI_TOKEN_MINUTES", 60)
P2P_OIDC_JWKS_CACHE_SECONDS = env_whole_number("P2P_OIDC_JWKS_CACHE_SECONDS", 300)
# A plain-HTTP issuer on loopback (a local identity provider) is for development and tests only; production issuers
# are https and never on internal addresses.
P2P_OIDC_ALLOW_HTTP_LOOPBACK = DEBUG

# Shared cache (API rate limits are counted here, so every web replica counts together).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "p2p",
    }
}
# Requests per API token (and per address without one), e.g. "1200/minute"; empty turns the limit off.
P2P_API_TOKEN_RATE = os.environ.get("P2P_API_TOKEN_RATE", "1200/minute")

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's password check, refusing everyone but superusers when P2P_LOCAL_LOGIN is 0.
    "p2p_portal.auth_backends.LocalPasswordBackend",
    # What team membership gives (view, request; release managers also approve and make tokens).
    "ci_integrations.services.teams.TeamPermissionBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
# One list inside the list means "this user name from this address": a flat list would lock each alone, so five wrong
# passwords from anywhere would lock any user out everywhere, and everyone behind one proxy would share one lockout.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Load balancers or reverse proxies whose X-Forwarded-For is believed (addresses or CIDR networks, comma-separated);
# empty: X-Forwarded-For is never believed, and the client is the direct peer.
P2P_TRUSTED_PROXIES = trusted_proxy_networks(os.environ.get("P2P_TRUSTED_PROXIES", ""))
AXES_CLIENT_IP_CALLABLE = "p2p_portal.client_address.client_address"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Approving into a step that needs two or more approvals asks for the password again when the sign-in is older.
P2P_REAUTH_MINUTES = env_whole_number("P2P_REAUTH_MINUTES", 15)

# Single sign-on with an OpenID Connect provider (docs/configuration.md#single-sign-on). No issuer: local users only.
P2P_OIDC_ISSUER = os.environ.get("P2P_OIDC_ISSUER", "").strip()
P2P_OIDC_CLIENT_ID = os.environ.get("P2P_OIDC_CLIENT_ID", "").strip()
# Empty for a public client (PKCE alone); otherwise sent with HTTP Basic (client_secret_basic) to the token endpoint.
P2P_OIDC_CLIENT_SECRET = os.environ.get("P2P_OIDC_CLIENT_SECRET", "")
P2P_OIDC_SCOPES = os.environ.get("P2P_OIDC_SCOPES", "").split() or ["openid", "email", "profile", "groups"]
P2P_OIDC_USERNAME_CLAIM = os.environ.get("P2P_OIDC_USERNAME_CLAIM", "").strip() or "preferred_username"
# Set to "" (the variable set and empty) for a provider that sends no groups: people then get no role from it.
P2P_OIDC_GROUPS_CLAIM = os.environ.get("P2P_OIDC_GROUPS_CLAIM", "groups").strip()
P2P_OIDC_NAME = os.environ.get("P2P_OIDC_NAME", "").strip() or "single sign-on"
# 0: the sign-in page offers single sign-on only; a password signs in superusers alone (break-glass, /login/?local=1).
P2P_LOCAL_LOGIN = env_bool("P2P_LOCAL_LOGIN", default=True)
if P2P_OIDC_ISSUER:
    _issuer = urlsplit(P2P_OIDC_ISSUER)
    _loopback = _issuer.hostname == "localhost"
    try:
        _loopback = _loopback or ipaddress.ip_address(_issuer.hostname or "").is_loopback
    except ValueError:
        pass
    if not _issuer.hostname or _issuer.query or _issuer.fragment or _issuer.scheme not in ("https", "http"):
        raise ImproperlyConfigured(f"P2P_OIDC_ISSUER {P2P_OIDC_ISSUER!r} is not an issuer URL (https://host/path).")
    if _issuer.scheme == "http" and not (_loopback and P2P_OIDC_ALLOW_HTTP_LOOPBACK):
        raise ImproperlyConfigured(
            f"P2P_OIDC_ISSUER {P2P_OIDC_ISSUER!r} must use https: plain http is accepted only on loopback "
            "(127.0.0.1, ::1, localhost) in development (DEBUG on), for development and tests."
        )
    if not P2P_OIDC_CLIENT_ID:
        raise ImproperlyConfigured("P2P_OIDC_ISSUER is set but P2P_OIDC_CLIENT_ID is not.")
    if "openid" not in P2P_OIDC_SCOPES:
        raise ImproperlyConfigured(f"P2P_OIDC_SCOPES {' '.join(P2P_OIDC_SCOPES)!r} must include openid.")
elif not P2P_LOCAL_LOGIN:
    raise ImproperlyConfigured("P2P_LOCAL_LOGIN=0 needs single sign-on: set P2P_OIDC_ISSUER, or nobody can sign in.")
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "ci_integrations.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "ci_integrations.api.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "P2P Portal API",
    "DESCRIPTION": "Register images, report checks, request and follow promotions, read the audit log.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1: full JSON Schema, so label names (propertyNames) are described like every other input.
    "OAS_VERSION": "3.1.0",
    # /api/docs/ serves Swagger UI from this portal's static files: it works offline and under the site's own CSP.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Database ids in paths are whole numbers of at most 18 digits (ci_integrations.api.urls.IdConverter).
    "PATH_CONVERTER_OVERRIDES": {"id": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ci_integrations.api.schema.add_links",
    ],
}

# A sign-in lasts a working day by default (Django's default is two weeks), then the person signs in again.
SESSION_COOKIE_AGE = env_whole_number("P2P_SESSION_HOURS", 12) * 3600

# Production hardening; behind a TLS-terminating load balancer set SECURE_PROXY_SSL_HEADER_ENABLED=1.
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# The container healthcheck and load balancers probe /healthz over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
if env_bool("SECURE_PROXY_SSL_HEADER_ENABLED", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
)

# GET /metrics (Prometheus): a bearer token, and/or addresses or networks allowed without one; off when neither is set.
P2P_METRICS_TOKEN = os.environ.get("P2P_METRICS_TOKEN", "")
try:
    P2P_METRICS_ALLOWED_IPS = [
        ipaddress.ip_network(item, strict=False) for item in env_list("P2P_METRICS_ALLOWED_IPS") if item
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"P2P_METRICS_ALLOWED_IPS: {exc} (expected e.g. 10.0.0.5,10.1.0.0/16)") from None

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# plain (the default) or json: one JSON object per line (p2p_portal/logging_json.py).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}.")
# Loggers that log secrets at DEBUG never go below INFO (a higher LOG_LEVEL still applies to them).
_NO_DEBUG = "INFO" if LOG_LEVEL in ("DEBUG", "NOTSET") else LOG_LEVEL
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "p2p_portal.logging_json.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # At DEBUG these log secrets: SQL parameters; botocore every AWS request's headers (with the session token) and
    # every response body (with the ECR authorization token).
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "botocore": {"level": _NO_DEBUG},
        "boto3": {"level": _NO_DEBUG},
        # authlib logs the PKCE code verifier at DEBUG.
        "authlib": {"level": _NO_DEBUG},
    },
}

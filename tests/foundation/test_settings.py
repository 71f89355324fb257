"""Production settings: `check --deploy` is clean, and missing secrets stop the process with a clear message."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def production_env(**overrides) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "P2P_"))}
    env.update(
        {
            "DEBUG": "0",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "P2P_FERNET_KEYS": Fernet.generate_key().decode(),
            "P2P_TOKEN_PEPPERS": f"2026={secrets.token_urlsafe(32)}",
            "ALLOWED_HOSTS": "p2p.example.com",
            "DJANGO_SETTINGS_MODULE": "p2p_portal.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(overrides)
    return {key: value for key, value in env.items() if value is not None}


def manage(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    result = manage("check", env=production_env(SECRET_KEY=None))
    assert result.returncode != 0
    assert "ImproperlyConfigured: Production settings need SECRET_KEY" in result.stderr


def test_production_refuses_a_short_secret_key_and_the_development_keys():
    from p2p_portal.settings import development_key

    short = manage("check", env=production_env(SECRET_KEY="too-short"))
    assert short.returncode != 0 and "SECRET_KEY must be a real secret" in short.stderr
    fernet = manage("check", env=production_env(P2P_FERNET_KEYS=development_key("fernet")))
    assert fernet.returncode != 0 and "P2P_FERNET_KEYS holds the public development key" in fernet.stderr


def database_options(**overrides) -> str:
    code = "from django.conf import settings; print(settings.DATABASES['default'].get('OPTIONS'))"
    env = production_env(DATABASE_URL="postgres://p2p@db.example.com:5432/p2p", **overrides)
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_postgresql_prepares_repeated_statements_unless_turned_off_for_a_pooler():
    assert database_options() == "{'server_side_binding': True, 'prepare_threshold': 2}"
    assert database_options(DATABASE_PREPARED_STATEMENTS="0") == "{}"


def test_the_default_sqlite_database_works_in_a_var_folder_that_does_not_exist_yet(tmp_path):
    var_dir = tmp_path / "fresh-clone" / "var"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "P2P_", "DATABASE_"))}
    env.update({"P2P_VAR_DIR": str(var_dir), "LOG_LEVEL": "WARNING"})
    result = manage("migrate", "--noinput", "-v", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert (var_dir / "p2p_portal.sqlite3").stat().st_size > 0


def settings_values(env: dict, *names: str) -> list[str]:
    """The repr of each named setting, as a fresh process with this environment loads them."""
    code = "from django.conf import settings; " + "; ".join(f"print(repr(settings.{name}))" for name in names)
    result = manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-len(names) :]


def development_env(**overrides) -> dict:
    """What `make run` and `make test` give the portal: none of its own variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "P2P_", "SECURE_")) and key not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")
    }
    env.update(LOG_LEVEL="WARNING", **overrides)
    return env


def test_development_needs_no_configuration_and_uses_the_embedded_keys():
    from p2p_portal.settings import development_key

    debug, secret_key, fernet = settings_values(development_env(), "DEBUG", "SECRET_KEY", "P2P_FERNET_KEYS")
    assert debug == "True"
    assert secret_key == repr(development_key("secret-key"))
    assert fernet == repr([development_key("fernet")])


def test_session_hours_set_the_session_age_and_a_bad_value_stops_start_up_naming_it():
    assert settings_values(development_env(), "SESSION_COOKIE_AGE") == [str(12 * 3600)]
    assert settings_values(development_env(P2P_SESSION_HOURS="3"), "SESSION_COOKIE_AGE") == [str(3 * 3600)]
    assert settings_values(production_env(P2P_SESSION_HOURS="8"), "SESSION_COOKIE_AGE") == [str(8 * 3600)]
    for bad in ("0", "-1", "1.5", "twelve", "١٢"):
        result = manage("check", env=development_env(P2P_SESSION_HOURS=bad))
        assert result.returncode != 0, bad
        assert f"ImproperlyConfigured: P2P_SESSION_HOURS is {bad!r}: expected a whole number greater than 0." in (
            result.stderr
        ), bad


def test_a_single_sign_on_issuer_must_be_https_except_on_loopback():
    plain = manage("check", env=development_env(P2P_OIDC_ISSUER="http://idp.example.com", P2P_OIDC_CLIENT_ID="p2p"))
    assert plain.returncode != 0
    assert "P2P_OIDC_ISSUER 'http://idp.example.com' must use https" in plain.stderr
    for issuer in ("https://idp.example.com/realms/acme", "http://127.0.0.1:8080", "http://localhost:5556/dex"):
        env = development_env(P2P_OIDC_ISSUER=issuer, P2P_OIDC_CLIENT_ID="p2p")
        assert settings_values(env, "P2P_OIDC_ISSUER") == [repr(issuer)]
    loopback_in_production = manage(
        "check", env=production_env(P2P_OIDC_ISSUER="http://127.0.0.1:8080", P2P_OIDC_CLIENT_ID="p2p")
    )
    assert "P2P_OIDC_ISSUER 'http://127.0.0.1:8080' must use https" in loopback_in_production.stderr
    no_client = manage("check", env=development_env(P2P_OIDC_ISSUER="https://idp.example.com"))
    assert "P2P_OIDC_ISSUER is set but P2P_OIDC_CLIENT_ID is not." in no_client.stderr


def test_turning_local_sign_in_off_without_a_provider_stops_start_up():
    result = manage("check", env=development_env(P2P_LOCAL_LOGIN="0"))
    assert result.returncode != 0 and "P2P_LOCAL_LOGIN=0 needs single sign-on" in result.stderr


def test_single_sign_on_settings_have_the_documented_defaults():
    env = development_env(P2P_OIDC_ISSUER="https://idp.example.com", P2P_OIDC_CLIENT_ID="p2p")
    names = ("P2P_OIDC_SCOPES", "P2P_OIDC_USERNAME_CLAIM", "P2P_OIDC_GROUPS_CLAIM", "P2P_OIDC_NAME", "P2P_LOCAL_LOGIN")
    assert settings_values(env, *names) == [
        repr(["openid", "email", "profile", "groups"]),
        "'preferred_username'",
        "'groups'",
        "'single sign-on'",
        "True",
    ]

"""A real OpenID Connect provider on a free loopback port: the `oidc-provider` npm package (OpenID certified).

The package is installed with npm into var/oidc-provider/ (ignored by git) the first time a test needs it, so
`make test` on a fresh machine needs nothing more than Node.js and npm. The provider's script is
tests/support/oidc_provider.mjs; its people and their groups are a JSON file the tests rewrite between sign-ins.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.support.registry_server import free_port, stop_process

ROOT = Path(__file__).resolve().parents[2]
VERSION = "9.13.3"
HOME = ROOT / "var" / "oidc-provider"
SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
CLIENT_ID = "p2p-portal"
PEOPLE = {
    "alice": {
        "preferred_username": "alice",
        "email": "alice@example.com",
        "given_name": "Alice",
        "family_name": "Anders",
        "groups": ["payments-leads", "everyone"],
    },
    "bob": {"preferred_username": "bob", "email": "bob@example.com", "groups": ["everyone"]},
    # A provider set up without a groups claim for this person.
    "nogroups": {"preferred_username": "nogroups", "email": "nogroups@example.com"},
}


def ensure_installed() -> Path:
    """var/oidc-provider/ with oidc-provider VERSION installed (npm, once; a lock keeps parallel runs apart)."""
    HOME.mkdir(parents=True, exist_ok=True)
    installed = HOME / "node_modules" / "oidc-provider" / "package.json"
    with open(HOME / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed.exists() and json.loads(installed.read_text()).get("version") == VERSION:
            return HOME
        if not shutil.which("npm") or not shutil.which("node"):
            raise RuntimeError("the single sign-on tests need Node.js 20 or later and npm (`make setup` installs them)")
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
        if int(node.lstrip("v").split(".")[0]) < 20:
            raise RuntimeError(f"oidc-provider {VERSION} needs Node.js 20 or later; this machine has {node}")
        manifest = {"name": "p2p-test-oidc-provider", "private": True, "type": "module"}
        manifest["dependencies"] = {"oidc-provider": VERSION}
        (HOME / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"],
            cwd=HOME,
            check=True,
            timeout=600,
        )
    return HOME


@dataclass
class OidcProvider:
    """A running provider. `people` is what it says about each person at their next sign-in."""

    issuer: str
    client_secret: str
    accounts_file: Path
    process: subprocess.Popen
    log_path: Path
    people: dict = field(default_factory=dict)

    client_id: str = CLIENT_ID

    def set_person(self, login: str, claims: dict) -> None:
        self.people[login] = claims
        self.accounts_file.write_text(json.dumps(self.people))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.accounts_file.parent, ignore_errors=True)


def start_oidc_provider(
    *, redirect_uris: list[str], post_logout_redirect_uris: list[str], claims_in_id_token: bool = True
) -> OidcProvider:
    """Start a provider; with `claims_in_id_token` off its ID tokens carry only `sub` (and the protocol's claims), and
    the scopes' claims come from its userinfo endpoint, as OpenID Connect's default has it."""
    home = ensure_installed()
    shutil.copyfile(SCRIPT, home / "provider.mjs")
    workdir = Path(tempfile.mkdtemp(prefix="p2p-oidc-"))
    accounts = workdir / "accounts.json"
    people = json.loads(json.dumps(PEOPLE))
    accounts.write_text(json.dumps(people))
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    secret = secrets.token_urlsafe(24)
    log_path = ROOT / "var" / "test-output" / f"oidc-provider-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PORT": str(port),
        "ISSUER": issuer,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": secret,
        "REDIRECT_URIS": ",".join(redirect_uris),
        "POST_LOGOUT_REDIRECT_URIS": ",".join(post_logout_redirect_uris),
        "ACCOUNTS_FILE": str(accounts),
        "CLAIMS_IN_ID_TOKEN": "1" if claims_in_id_token else "0",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["node", "provider.mjs"], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    provider = OidcProvider(issuer, secret, accounts, process, log_path, people)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"oidc-provider exited with {process.returncode}:\n{provider.log()}")
        try:
            if requests.get(f"{issuer}/.well-known/openid-configuration", timeout=1).ok:
                return provider
        except requests.RequestException:
            pass
        time.sleep(0.1)
    provider.stop()
    raise RuntimeError(f"oidc-provider did not answer on {issuer}:\n{provider.log()}")

"""What `p2p push` sends as metadata by itself: the commit time (lead time for changes starts there) and the
repository's URL (the diff's compare link), from the CI system's variables or from the checkout's git."""

from __future__ import annotations

import subprocess

import pytest

from ci_integrations.cli import p2p

CI_VARIABLES = (
    "GITHUB_SHA",
    "GITHUB_REPOSITORY",
    "GITHUB_SERVER_URL",
    "GITHUB_RUN_ID",
    "GITHUB_REF_NAME",
    "CI_COMMIT_SHA",
    "CI_COMMIT_TIMESTAMP",
    "CI_PROJECT_URL",
    "CI_COMMIT_REF_NAME",
    "CI_JOB_URL",
    "GIT_COMMIT",
    "GIT_BRANCH",
    "BUILD_URL",
)


@pytest.fixture
def no_ci(monkeypatch, tmp_path):
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # not inside a git repository
    return tmp_path


def commit(directory, when: str) -> str:
    """A repository in `directory` with one commit made at `when`; its sha."""
    env = {
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@example.com",
        "GIT_COMMITTER_DATE": when,
        "GIT_AUTHOR_DATE": when,
        "PATH": "/usr/bin:/bin",
        "HOME": str(directory),
    }
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "build me"]):
        subprocess.run(["git", *args], cwd=directory, env=env, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=directory, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_gitlab_says_when_the_commit_was_made_and_where_the_project_lives(no_ci, monkeypatch):
    monkeypatch.setenv("CI_COMMIT_SHA", "0123abcd")
    monkeypatch.setenv("CI_COMMIT_TIMESTAMP", "2026-11-30T09:12:00+01:00")
    monkeypatch.setenv("CI_PROJECT_URL", "https://gitlab.example.com/acme/payments-api")
    meta = p2p.ci_metadata()
    assert meta["commit_time"] == "2026-11-30T09:12:00+01:00"
    assert meta["repo_url"] == "https://gitlab.example.com/acme/payments-api"


def test_elsewhere_the_checkouts_git_gives_the_commit_time_of_the_built_sha(no_ci, monkeypatch):
    sha = commit(no_ci, "2026-11-29T17:45:00+00:00")
    monkeypatch.setenv("GITHUB_SHA", sha)
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/payments-api")
    meta = p2p.ci_metadata()
    assert meta["commit_time"] == "2026-11-29T17:45:00+00:00"
    assert meta["repo_url"] == "https://github.com/acme/payments-api"
    assert meta["git_sha"] == sha


def test_without_git_or_ci_variables_no_commit_time_is_made_up(no_ci):
    meta = p2p.ci_metadata()
    assert "commit_time" not in meta and "repo_url" not in meta


def test_meta_flags_override_commit_time_and_repo_url_and_other_keys_are_labels(no_ci):
    meta = p2p.parse_meta(["commit_time=2026-01-02T03:04:05Z", "repo_url=https://git.example.com/x", "team=web"])
    assert meta["commit_time"] == "2026-01-02T03:04:05Z" and meta["repo_url"] == "https://git.example.com/x"
    assert meta["labels"] == {"team": "web"}

"""Image reference parsing and the validators the Django models share."""

from __future__ import annotations

import pytest

from ci_integrations.registry import (
    InvalidReference,
    is_valid_digest,
    is_valid_repository,
    is_valid_tag,
    parse_reference,
)

SHA = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("docker.io/nginx", "docker.io", "library/nginx", None, None),
        ("index.docker.io/team/app:v1", "docker.io", "team/app", "v1", None),
        ("team/app", "docker.io", "team/app", None, None),
        ("localhost/app", "localhost", "app", None, None),
        ("127.0.0.1:5001/team/payments-api:1.2.3", "127.0.0.1:5001", "team/payments-api", "1.2.3", None),
        (f"ghcr.io/org/app@{SHA}", "ghcr.io", "org/app", None, SHA),
        (f"ghcr.io/org/app:v1@{SHA}", "ghcr.io", "org/app", "v1", SHA),
        (
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/a/b:x",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "a/b",
            "x",
            None,
        ),
        ("europe-docker.pkg.dev/proj/repo/img:1", "europe-docker.pkg.dev", "proj/repo/img", "1", None),
        ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None),
        ("reg.example.com/a__b/c.d-e:TAG_1.0-rc", "reg.example.com", "a__b/c.d-e", "TAG_1.0-rc", None),
    ],
)
def test_references_parse_with_docker_hub_defaults(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_reference_prefers_digest_and_defaults_to_latest():
    assert parse_reference(f"a/b:v1@{SHA}").reference == SHA
    assert parse_reference("a/b").reference == "latest"
    assert str(parse_reference("nginx:1")) == "docker.io/library/nginx:1"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "empty"),
        ("reg.example.com/Team/app:1", "path component 'Team'"),
        ("reg.example.com/team//app", "path component ''"),
        ("reg.example.com/team/app:-bad", "tag"),
        ("reg.example.com/team/app:" + "x" * 129, "tag"),
        ("reg.example.com/team/app@sha256:abc", "digest"),
        ("reg.example.com/team/app@md5:" + "a" * 32, "digest"),
        ("reg.example.com/team/app@sha256:" + "A" * 64, "digest"),
        ("bad_host.example.com/app:1", "host"),
        ("-bad.example.com/app:1", "host"),
        ("https://reg.example.com/app:1", "URL scheme"),
        ("reg.example.com/app:1 ", "whitespace"),
        ("reg.example.com/app\n:1", "control"),
        ("reg.example.com/", "no repository"),
        ("reg.example.com/app_/x", "path component 'app_'"),
        ("reg.example.com/" + "a" * 256, "longer than"),
    ],
)
def test_bad_references_name_the_wrong_part(text, names):
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    assert names in caught.value.message


def test_uppercase_repository_hint_says_lowercase():
    with pytest.raises(InvalidReference, match="lowercase"):
        parse_reference("reg.example.com/Team/app")


def test_validators_follow_the_distribution_grammar():
    assert is_valid_tag("v1.2.3-rc_1") and is_valid_tag("_x") and is_valid_tag("a" * 128)
    assert not is_valid_tag(".x") and not is_valid_tag("-x") and not is_valid_tag("a" * 129) and not is_valid_tag("")
    assert not is_valid_tag("<script>") and not is_valid_tag("a b")
    assert is_valid_repository("team/payments-api") and is_valid_repository("a/b/c__d.e")
    assert not is_valid_repository("Team/x") and not is_valid_repository("/x") and not is_valid_repository("x/")
    assert not is_valid_repository("a--") and not is_valid_repository("a" * 256)
    assert is_valid_digest(SHA) and is_valid_digest("sha512:" + "b" * 128)
    assert not is_valid_digest("sha256:" + "a" * 63) and not is_valid_digest("sha256:" + "g" * 64)
    assert not is_valid_digest("sha1:" + "a" * 40) and not is_valid_digest(None)

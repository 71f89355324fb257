"""The diff's shape in the API (services/diffs.py computes it): what changes in an environment if a candidate lands.

A section that could not be computed carries only `unavailable`, one line saying why; every other field is then
absent, which is why they are not required here.
"""

from __future__ import annotations

from rest_framework import serializers

from ci_integrations.api.serializers import ChangelogOut, Line, valid_environment

UNAVAILABLE = {"required": False, "help_text": "why this part could not be computed; the other fields are absent"}


class DiffSideOut(serializers.Serializer):
    digest = serializers.CharField()
    artifact = serializers.IntegerField()


class CommitsOut(serializers.Serializer):
    before_sha = serializers.CharField()
    after_sha = serializers.CharField()
    repo_url = serializers.CharField()
    compare_url = serializers.CharField(help_text="GitHub, GitLab or Bitbucket compare page; empty when unknown")
    changelog = ChangelogOut(many=True)
    unavailable = serializers.CharField(**UNAVAILABLE)


class CheckSideOut(serializers.Serializer):
    name = serializers.CharField()
    before = serializers.CharField(allow_null=True)
    after = serializers.CharField(allow_null=True)
    after_url = serializers.CharField()


class MetadataSideOut(serializers.Serializer):
    name = serializers.CharField()
    before = serializers.CharField(allow_null=True)
    after = serializers.CharField(allow_null=True)
    changed = serializers.BooleanField()


class LabelOut(serializers.Serializer):
    name = serializers.CharField()
    value = serializers.CharField(required=False)
    before = serializers.CharField(required=False)
    after = serializers.CharField(required=False)
    highlight = serializers.BooleanField(help_text="revision, version, created or base.digest")


class LabelsDiffOut(serializers.Serializer):
    added = LabelOut(many=True)
    removed = LabelOut(many=True)
    changed = LabelOut(many=True)


class NamesDiffOut(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField(), help_text="env only: value changed", required=False)


class ConfigSettingOut(serializers.Serializer):
    name = serializers.ChoiceField(choices=["entrypoint", "cmd", "user", "workdir"])
    before = serializers.JSONField(allow_null=True, help_text="a string or a list of strings")
    after = serializers.JSONField(allow_null=True)


class ConfigDiffOut(serializers.Serializer):
    labels = LabelsDiffOut()
    env = NamesDiffOut(help_text="environment variable names only; values are never shown")
    settings = ConfigSettingOut(many=True, help_text="entrypoint, cmd, user and working dir, where they differ")
    ports = NamesDiffOut()


class LayerOut(serializers.Serializer):
    digest = serializers.CharField()
    size = serializers.IntegerField()


class LayersDiffOut(serializers.Serializer):
    shared = LayerOut(many=True)
    added = LayerOut(many=True)
    removed = LayerOut(many=True)
    shared_bytes = serializers.IntegerField()
    added_bytes = serializers.IntegerField()
    removed_bytes = serializers.IntegerField()
    total_before = serializers.IntegerField()
    total_after = serializers.IntegerField()
    total_change = serializers.IntegerField()


class PlatformsDiffOut(serializers.Serializer):
    before = serializers.ListField(child=serializers.CharField())
    after = serializers.ListField(child=serializers.CharField())
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())


class PackageOut(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField(required=False)
    before = serializers.CharField(required=False)
    after = serializers.CharField(required=False)


class PackageCountsOut(serializers.Serializer):
    added = serializers.IntegerField()
    removed = serializers.IntegerField()
    changed = serializers.IntegerField()
    total = serializers.IntegerField()


class SbomDiffOut(serializers.Serializer):
    counts = PackageCountsOut(required=False)
    added = PackageOut(many=True, required=False)
    removed = PackageOut(many=True, required=False)
    changed = PackageOut(many=True, required=False)
    source = serializers.CharField(help_text="the attachment it was read from, and its format", required=False)
    note = serializers.CharField(required=False)
    unavailable = serializers.CharField(**UNAVAILABLE)


class SeverityCountsOut(serializers.Serializer):
    critical = serializers.IntegerField()
    high = serializers.IntegerField()
    medium = serializers.IntegerField()
    low = serializers.IntegerField()
    unknown = serializers.IntegerField()


class FindingOut(serializers.Serializer):
    id = serializers.CharField()
    package = serializers.CharField()
    severity = serializers.ChoiceField(choices=["critical", "high", "medium", "low", "unknown"])


class VulnerabilitiesDiffOut(serializers.Serializer):
    new_by_severity = SeverityCountsOut(required=False)
    fixed_by_severity = SeverityCountsOut(required=False)
    total_by_severity = SeverityCountsOut(required=False)
    new = FindingOut(many=True, required=False)
    fixed = FindingOut(many=True, required=False)
    source = serializers.CharField(required=False)
    note = serializers.CharField(required=False)
    unavailable = serializers.CharField(**UNAVAILABLE)


class ImageDiffOut(serializers.Serializer):
    platform = serializers.CharField(help_text="the platform compared, for an index; else empty", required=False)
    platforms = PlatformsDiffOut(required=False)
    config = ConfigDiffOut(required=False)
    layers = LayersDiffOut(required=False)
    sbom = SbomDiffOut(required=False)
    vulnerabilities = VulnerabilitiesDiffOut(required=False)
    cached_at = serializers.DateTimeField(help_text="when the registry was read, if not just now", required=False)
    unavailable = serializers.CharField(**UNAVAILABLE)


class DiffOut(serializers.Serializer):
    environment = serializers.CharField()
    before = DiffSideOut(allow_null=True, help_text="what the environment runs (ran, for a finished promotion)")
    after = DiffSideOut(help_text="the candidate")
    same_image = serializers.BooleanField()
    commits = CommitsOut()
    checks = CheckSideOut(many=True)
    metadata = MetadataSideOut(many=True)
    image = ImageDiffOut()


class PreviewDiffIn(serializers.Serializer):
    artifact = Line(max_length=128, help_text="artifact id, digest (sha256:…) or tag")
    to_env = Line(max_length=63, validators=[valid_environment])

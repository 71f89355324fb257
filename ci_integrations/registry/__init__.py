"""OCI Distribution client and copy engine. Knows nothing of Django: specs in, summaries out, typed errors."""

from .client import ManifestInfo
from .copy import (
    CopyPlan,
    CopyProgress,
    CopySummary,
    check_access,
    copy_image,
    plan_copy,
    push_credentials,
    resolve_manifest,
)
from .errors import (
    AccessDenied,
    AuthenticationError,
    DigestMismatch,
    ImageMismatch,
    InvalidReference,
    NotFound,
    ProtocolError,
    RegistryError,
    TagConflict,
    TransientError,
)
from .refs import (
    ImageLocation,
    ImageReference,
    RegistrySpec,
    is_valid_digest,
    is_valid_repository,
    is_valid_tag,
    parse_reference,
)

__all__ = [
    "AccessDenied",
    "AuthenticationError",
    "CopyPlan",
    "CopyProgress",
    "CopySummary",
    "DigestMismatch",
    "ImageLocation",
    "ImageMismatch",
    "ImageReference",
    "InvalidReference",
    "ManifestInfo",
    "NotFound",
    "ProtocolError",
    "RegistryError",
    "RegistrySpec",
    "TagConflict",
    "TransientError",
    "check_access",
    "copy_image",
    "is_valid_digest",
    "is_valid_repository",
    "is_valid_tag",
    "parse_reference",
    "plan_copy",
    "push_credentials",
    "resolve_manifest",
]

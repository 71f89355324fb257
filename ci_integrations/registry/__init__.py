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
from .destinations import AddressGuard, address_guard
from .errors import (
    AccessDenied,
    AttachmentRefused,
    AuthenticationError,
    CannotScope,
    DestinationRefused,
    DigestMismatch,
    ImageMismatch,
    IndexTooLarge,
    InvalidReference,
    NotFound,
    ProtocolError,
    RegistryError,
    TagConflict,
    TransientError,
    cut,
)
from .providers import PushCredentials, PushScope
from .referrers import MODES as ATTACHED_MODES
from .referrers import Attachment, list_attachments
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
    "ATTACHED_MODES",
    "AccessDenied",
    "Attachment",
    "AttachmentRefused",
    "AddressGuard",
    "AuthenticationError",
    "CannotScope",
    "CopyPlan",
    "CopyProgress",
    "CopySummary",
    "DestinationRefused",
    "DigestMismatch",
    "ImageLocation",
    "ImageMismatch",
    "ImageReference",
    "IndexTooLarge",
    "InvalidReference",
    "ManifestInfo",
    "NotFound",
    "ProtocolError",
    "PushCredentials",
    "PushScope",
    "RegistryError",
    "RegistrySpec",
    "TagConflict",
    "TransientError",
    "address_guard",
    "check_access",
    "copy_image",
    "cut",
    "is_valid_digest",
    "is_valid_repository",
    "is_valid_tag",
    "list_attachments",
    "parse_reference",
    "plan_copy",
    "push_credentials",
    "resolve_manifest",
]

"""API v1 diffs: what changes in an environment if a candidate lands there (services/diffs.py computes it)."""

from __future__ import annotations

from rest_framework.response import Response

from ci_integrations.api.diff_serializers import DiffOut, PreviewDiffIn
from ci_integrations.api.schema import READ_ERRORS, api_operation
from ci_integrations.api.views import ApiView, artifact_by_reference, integration_for, promotion_for
from ci_integrations.services.diffs import preview_diff, promotion_diff


class PromotionDiffView(ApiView):
    @api_operation(operation_id="promotion_diff", responses={200: DiffOut}, errors=READ_ERRORS)
    def get(self, request, pk: int):
        """What the promotion changes in its target: commits, image config, layers, platforms, SBOM packages,
        vulnerabilities, checks and metadata. A part that cannot be computed says why in `unavailable`."""
        return Response(DiffOut(promotion_diff(promotion=promotion_for(request, pk))).data)


class PreviewDiffView(ApiView):
    @api_operation(
        operation_id="promotion_preview_diff", parameters=[PreviewDiffIn], responses={200: DiffOut}, errors=READ_ERRORS
    )
    def get(self, request, name: str):
        """What promoting `artifact` (id, digest or tag) into `to_env` would change there, before it is requested."""
        integration = integration_for(request, name)
        query = self.parse(PreviewDiffIn, request.query_params)
        artifact = artifact_by_reference(integration, query["artifact"])
        return Response(DiffOut(preview_diff(artifact=artifact, to_env=query["to_env"])).data)

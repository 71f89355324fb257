"""API routes: OpenAPI schema and docs, and v1. The v1 paths are part of the contract with CI pipelines."""

from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from ci_integrations.api import insights, views
from ci_integrations.api.errors import json_not_found


class IdConverter:
    """Database ids: at most 18 digits, so a huge number is a 404 rather than an out-of-range database error."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(value)


class SwaggerDocsView(SpectacularSwaggerSplitView):
    """Swagger UI from the portal's own static files, its settings script a separate file: the site's CSP holds."""

    schema = None  # the docs page is not an API operation
    template_name = "ci_integrations/api_docs.html"


register_converter(IdConverter, "id")

v1 = [
    path("integrations/", views.IntegrationListView.as_view(), name="api-integrations"),
    path("integrations/<slug:name>/", views.IntegrationDetailView.as_view(), name="api-integration"),
    path("integrations/<slug:name>/artifacts/", views.ArtifactsView.as_view(), name="api-artifacts"),
    path("integrations/<slug:name>/imports/", views.ImportCreateView.as_view(), name="api-imports"),
    path("integrations/<slug:name>/rollback/", views.RollbackView.as_view(), name="api-rollback"),
    path(
        "integrations/<slug:name>/push-credentials/", views.PushCredentialsView.as_view(), name="api-push-credentials"
    ),
    path("artifacts/<id:pk>/", views.ArtifactDetailView.as_view(), name="api-artifact"),
    path("artifacts/<id:pk>/checks/", views.CheckReportView.as_view(), name="api-checks"),
    path("jobs/<id:pk>/", views.JobDetailView.as_view(), name="api-job"),
    path("promotions/", views.PromotionCreateView.as_view(), name="api-promotions"),
    path("promotions/<id:pk>/", views.PromotionDetailView.as_view(), name="api-promotion"),
    path("promotions/<id:pk>/approve/", views.PromotionApproveView.as_view(), name="api-promotion-approve"),
    path("promotions/<id:pk>/reject/", views.PromotionRejectView.as_view(), name="api-promotion-reject"),
    path("promotions/<id:pk>/cancel/", views.PromotionCancelView.as_view(), name="api-promotion-cancel"),
    path("promotions/<id:pk>/retry/", views.PromotionRetryView.as_view(), name="api-promotion-retry"),
    path("stop/", views.StopView.as_view(), name="api-stop"),
    path("audit/", views.AuditListView.as_view(), name="api-audit"),
    path("audit/verify/", views.AuditVerifyView.as_view(), name="api-audit-verify"),
    path("auth/oidc/", views.OidcExchangeView.as_view(), name="api-auth-oidc"),
    path("cli/p2p", views.cli_download, name="api-cli"),
    path("insights/dora/", insights.DoraView.as_view(), name="api-insights-dora"),
]

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SwaggerDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("v1/", include(v1)),
    re_path(r"^[\s\S]*$", json_not_found, name="api-not-found"),
]

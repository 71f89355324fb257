"""Top-level routes: the UI, the API, the admin and the health check."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("ci_integrations.api.urls")),
    path("", include("ci_integrations.urls")),
]

"""UI routes."""

from django.urls import path

from ci_integrations import insight_views, metrics_endpoint, sso_views, views
from ci_integrations.forms import SignInForm

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics_endpoint.metrics, name="metrics"),
    path("login/", views.SignInView.as_view(authentication_form=SignInForm), name="login"),
    path("login/sso/", sso_views.sso_start, name="sso_start"),
    path("login/sso/callback/", sso_views.sso_callback, name="sso_callback"),
    path("logout/", sso_views.SignOutView.as_view(), name="logout"),
    path("", views.overview, name="overview"),
    path("integrations/<slug:name>/", views.integration_page, name="integration"),
    path("integrations/<slug:name>/<slug:env>/rollback/<int:arrival_pk>/", views.rollback, name="rollback"),
    path("artifacts/<int:pk>/", views.artifact_page, name="artifact"),
    path("artifacts/<int:pk>/promote/<slug:env>/", views.promote, name="promote"),
    path("approvals/", views.approvals, name="approvals"),
    path("promotions/<int:pk>/", views.promotion_page, name="promotion"),
    path("promotions/<int:pk>/decision/", views.approval_panel, name="approval_panel"),
    path("promotions/<int:pk>/approve/", views.promotion_approve, name="promotion_approve"),
    path("promotions/<int:pk>/reject/", views.promotion_reject, name="promotion_reject"),
    path("promotions/<int:pk>/cancel/", views.promotion_cancel, name="promotion_cancel"),
    path("promotions/<int:pk>/retry/", views.promotion_retry, name="promotion_retry"),
    path("insights/", insight_views.insights, name="insights"),
    path("audit/", views.audit_log, name="audit"),
    path("audit/export.csv", views.audit_export, {"fmt": "csv"}, name="audit_export_csv"),
    path("audit/export.jsonl", views.audit_export, {"fmt": "jsonl"}, name="audit_export_jsonl"),
    path("audit/verify/", views.audit_verify_now, name="audit_verify"),
    path("audit/badge/", views.audit_badge, name="audit_badge"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("stop/", views.emergency_stop, name="emergency_stop"),
    path("freeze-windows/", views.freeze_windows, name="freeze_windows"),
    path("freeze-windows/<int:pk>/end/", views.freeze_window_end_view, name="freeze_window_end"),
]

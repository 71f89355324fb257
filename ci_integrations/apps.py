from django.apps import AppConfig


class CiIntegrationsConfig(AppConfig):
    name = "ci_integrations"
    verbose_name = "CI Integrations"
    default_auto_field = "django.db.models.BigAutoField"

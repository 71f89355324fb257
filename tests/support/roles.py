"""The role groups for tests: transactional tests empty every table, including what the roles migration made."""

import importlib

from django.apps import apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType


def restore_roles() -> None:
    """Put back the permissions and the role groups the migrations made (0003, with the import job renamed by 0008,
    and the grants of 0009) when a flush has removed them."""
    roles = importlib.import_module("ci_integrations.migrations.0003_roles")
    grants = {}
    for migration in ("0009_token_owners", "0014_schedule_freeze_stop_notifications"):
        for name, codenames in importlib.import_module(f"ci_integrations.migrations.{migration}").GRANTS.items():
            grants.setdefault(name, []).extend(codenames)
    if Group.objects.filter(name__in=roles.ROLES).count() == len(roles.ROLES):
        return
    ContentType.objects.clear_cache()
    for app_config in apps.get_app_configs():
        create_permissions(app_config, verbosity=0)
    for name, codenames in roles.ROLES.items():
        codenames = [codename.replace("_job", "_importjob") for codename in [*codenames, *grants.get(name, [])]]
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(Permission.objects.filter(content_type__app_label=roles.APP, codename__in=codenames))

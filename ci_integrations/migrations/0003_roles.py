"""The three roles of DESIGN.md's user table as groups with matching permissions."""

from django.db import migrations

APP = "ci_integrations"
MODELS = [
    "registry",
    "workflow",
    "workflowstep",
    "integration",
    "bucket",
    "artifact",
    "arrival",
    "checkresult",
    "promotion",
    "approval",
    "freezewindow",
    "auditentry",
    "apitoken",
    "job",
    "webhook",
    "webhookdelivery",
]
VIEW_ALL = [f"view_{model}" for model in MODELS]
ROLES = {
    "auditors": VIEW_ALL + ["export_auditentry"],
    "release-managers": VIEW_ALL + ["request_promotion", "approve_promotion", "add_apitoken"],
    "platform-admins": VIEW_ALL
    + ["request_promotion", "approve_promotion", "export_auditentry", "override_freezewindow"]
    + [f"{verb}_{model}" for model in MODELS if model != "auditentry" for verb in ("add", "change", "delete")],
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(Permission.objects.filter(content_type__app_label=APP, codename__in=codenames))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [("ci_integrations", "0002_audit_append_only"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_roles, remove_roles)]

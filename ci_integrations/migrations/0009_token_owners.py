"""CI tokens get an owner and a maker; making CI tokens becomes its own permission, given to platform admins.

Existing CI tokens made in the portal (created_by is a user name) are owned by that person; those made by a command
become system tokens.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

GRANTS = {"platform-admins": ["add_ci_token"]}


def grant_ci_token_permission(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group = Group.objects.filter(name=name).first()
        if group is not None:
            group.permissions.add(
                *Permission.objects.filter(content_type__app_label="ci_integrations", codename__in=codenames)
            )


def owners_from_makers(apps, schema_editor):
    ApiToken = apps.get_model("ci_integrations", "ApiToken")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    for token in ApiToken.objects.filter(kind="ci", owner__isnull=True):
        maker = User.objects.filter(username=token.created_by).first()
        if maker is not None:
            ApiToken.objects.filter(pk=token.pk).update(owner=maker, made_by=maker)


class Migration(migrations.Migration):
    dependencies = [
        ("ci_integrations", "0008_house"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="apitoken",
            options={
                "ordering": ["-created_at"],
                "permissions": [("add_ci_token", "Can create CI tokens (platform admins by default)")],
            },
        ),
        migrations.AddField(
            model_name="apitoken",
            name="made_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="owned_ci_tokens",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="promotion",
            name="on_behalf_of",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddConstraint(
            model_name="apitoken",
            constraint=models.CheckConstraint(
                condition=models.Q(("kind", "ci"), ("owner__isnull", True), _connector="OR"),
                name="personal_token_has_no_owner",
            ),
        ),
        migrations.RunPython(grant_ci_token_permission, migrations.RunPython.noop),
        migrations.RunPython(owners_from_makers, migrations.RunPython.noop),
    ]

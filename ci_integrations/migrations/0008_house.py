"""The house: promotions are never left `approved` (approval that completes the quorum queues at once), the import
job row is named for what it holds, and names follow the one name rule of input_rules.py."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

import ci_integrations.models


def approved_promotions_are_queued(apps, schema_editor):
    # `approved` was never entered; any row that holds it is waiting for its copy, which is what `queued` means.
    apps.get_model("ci_integrations", "Promotion").objects.filter(state="approved").update(state="queued")


def _rename_permissions(apps, old: str, new: str, old_words: str, new_words: str) -> None:
    Permission = apps.get_model("auth", "Permission")
    for permission in Permission.objects.filter(
        content_type__app_label="ci_integrations", codename__endswith=f"_{old}"
    ):
        verb = permission.codename.rsplit("_", 1)[0]
        # The renamed content type may already have fresh permissions made for it; keep the granted ones.
        Permission.objects.filter(content_type=permission.content_type, codename=f"{verb}_{new}").delete()
        permission.codename = f"{verb}_{new}"
        permission.name = permission.name.replace(old_words, new_words)
        permission.save(update_fields=["codename", "name"])


def rename_job_permissions(apps, schema_editor):
    _rename_permissions(apps, "job", "importjob", "job", "import job")


def unrename_job_permissions(apps, schema_editor):
    _rename_permissions(apps, "importjob", "job", "import job", "job")


class Migration(migrations.Migration):
    dependencies = [
        ("ci_integrations", "0007_audit_append_lock_function"),
    ]

    operations = [
        migrations.AlterField(
            model_name="bucket",
            name="env",
            field=models.SlugField(max_length=63, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="checkresult",
            name="name",
            field=models.SlugField(max_length=63, validators=[ci_integrations.models.validate_check_name]),
        ),
        migrations.AlterField(
            model_name="integration",
            name="name",
            field=models.SlugField(max_length=63, unique=True, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="promotion",
            name="state",
            field=models.CharField(
                choices=[
                    ("pending_approval", "Pending approval"),
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("rejected", "Rejected"),
                    ("cancelled", "Cancelled"),
                ],
                default="pending_approval",
                max_length=20,
            ),
        ),
        migrations.AlterField(
            model_name="registry",
            name="name",
            field=models.SlugField(max_length=63, unique=True, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="workflow",
            name="name",
            field=models.SlugField(max_length=63, unique=True, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="workflowstep",
            name="from_env",
            field=models.SlugField(max_length=63, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.AlterField(
            model_name="workflowstep",
            name="to_env",
            field=models.SlugField(max_length=63, validators=[ci_integrations.models.validate_name]),
        ),
        migrations.RunPython(approved_promotions_are_queued, migrations.RunPython.noop),
        migrations.RenameModel(old_name="Job", new_name="ImportJob"),
        migrations.RunPython(rename_job_permissions, unrename_job_permissions),
        migrations.RemoveField(model_name="importjob", name="kind"),
        migrations.RenameField(model_name="importjob", old_name="rq_job_id", new_name="job_id"),
        migrations.AlterField(
            model_name="importjob",
            name="integration",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="import_jobs",
                to="ci_integrations.integration",
            ),
        ),
        migrations.AlterModelOptions(name="importjob", options={"ordering": ["-created_at", "-id"]}),
    ]

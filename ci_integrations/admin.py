"""Django admin for platform admins.

Every add, change and delete made here writes an audit entry in the same transaction (AuditedAdmin), with the
before and after of the fields that changed; secrets never reach the log. What the product's services own
(promotions, approvals, arrivals, artifacts, tokens, the audit log itself) is read-only here, so the admin cannot
bypass four-eyes, the arrival pointer or the append-only log.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import csrf_protect_m
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db import models, transaction

from ci_integrations.forms import AdminSignInForm
from ci_integrations.models import (
    ApiToken,
    Approval,
    Arrival,
    Artifact,
    AuditEntry,
    Bucket,
    CheckResult,
    EmailNotification,
    FreezeWindow,
    IdempotencyRecord,
    ImportJob,
    Integration,
    Promotion,
    Registry,
    Webhook,
    WebhookDelivery,
    Workflow,
    WorkflowStep,
)
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.tokens import token_revoke

# Columns whose values are secret (or derived from one): their changes are recorded as "stored"/"ambient" at most.
SECRET_FIELDS = {"credentials_encrypted", "secret_encrypted", "secret_hash", "pepper_id", "password"}


def field_values(obj: models.Model) -> dict:
    """The concrete, non-secret field values of a row (related rows by primary key)."""
    return {
        field.attname: field.value_from_object(obj)
        for field in obj._meta.concrete_fields
        if field.attname not in SECRET_FIELDS
    }


def many_to_many_values(obj: models.Model) -> dict:
    """What each many-to-many field of a saved row points at (as names), sorted for comparison."""
    if obj.pk is None:
        return {}
    return {
        field.name: sorted(str(related) for related in field.value_from_object(obj)) for field in obj._meta.many_to_many
    }


def changed_values(before: dict, after: dict) -> tuple[dict, dict]:
    keys = [key for key in after if before.get(key) != after[key]]
    return {key: before.get(key) for key in keys}, {key: after[key] for key in keys}


def secret_state(obj: models.Model) -> dict:
    """Whether a row holds a stored secret, which is all the audit log may say about it."""
    if isinstance(obj, Registry):
        return {"credentials": "stored" if obj.credentials_encrypted else "ambient"}
    if isinstance(obj, Webhook):
        return {"secret": "stored" if obj.secret_encrypted else "none"}
    return {}


def record_save(request, obj: models.Model, *, is_new: bool) -> None:
    """Save obj and audit what changed; call inside the admin's transaction."""
    actor = Actor.from_request(request)
    if is_new:
        obj.save()
        audit_record(actor=actor, action="admin.create", obj=obj, after={**field_values(obj), **secret_state(obj)})
        return
    stored = type(obj)._default_manager.get(pk=obj.pk)
    before, after = changed_values(field_values(stored), field_values(obj))
    old_secret, new_secret = secret_state(stored), secret_state(obj)
    secret_column = {Registry: "credentials_encrypted", Webhook: "secret_encrypted"}.get(type(obj))
    if secret_column and getattr(stored, secret_column) != getattr(obj, secret_column):
        before.update(old_secret)
        after.update({key: f"{value} (replaced)" if value != "ambient" else value for key, value in new_secret.items()})
    obj.save()
    after.pop("updated_at", None)
    before.pop("updated_at", None)
    if after:
        audit_record(actor=actor, action="admin.update", obj=obj, before=before, after=after)


def record_delete(request, obj: models.Model) -> None:
    audit_record(
        actor=Actor.from_request(request),
        action="admin.delete",
        obj=obj,
        before={**field_values(obj), **secret_state(obj)},
    )
    obj.delete()


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose every add, change and delete (inlines and many-to-many included) is audited."""

    def save_model(self, request, obj, form, change):
        request._audit_m2m_before = many_to_many_values(obj) if change else {}
        record_save(request, obj, is_new=not change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        obj = form.instance
        before, after = changed_values(getattr(request, "_audit_m2m_before", {}), many_to_many_values(obj))
        if not change:
            after = {key: value for key, value in after.items() if value}
        if after:
            audit_record(
                actor=Actor.from_request(request),
                action="admin.update",
                obj=obj,
                before=before if change else None,
                after=after,
            )

    def save_formset(self, request, form, formset, change):
        formset.save(commit=False)
        for obj in formset.deleted_objects:
            record_delete(request, obj)
        for obj in formset.new_objects:
            record_save(request, obj, is_new=True)
        for obj, _fields in formset.changed_objects:
            record_save(request, obj, is_new=False)
        formset.save_m2m()

    def delete_model(self, request, obj):
        record_delete(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                record_delete(request, obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows rows that only the product's services may write: no add, change or delete, even for superusers."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value: what was typed does not come back in the page, even with errors."""

    def format_value(self, value):
        return None


class RegistryForm(forms.ModelForm):
    """Credentials are write-only: typed in to replace, never shown back."""

    new_credentials = forms.CharField(
        required=False,
        widget=WriteOnlyTextarea(attrs={"rows": 3, "autocomplete": "off"}),
        label="Replace stored credentials",
        help_text='A JSON object, e.g. {"username": "robot", "password": "…"}. Leave empty to keep what is stored. '
        "Never displayed again.",
    )
    clear_credentials = forms.BooleanField(
        required=False, label="Use ambient credentials", help_text="Delete the stored credentials."
    )

    class Meta:
        model = Registry
        fields = ["name", "provider", "url", "options"]

    def clean_new_credentials(self) -> dict | None:
        text = self.cleaned_data["new_credentials"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None
        if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
            raise forms.ValidationError("must be a JSON object of strings, such as username and password")
        return value

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("new_credentials") and cleaned.get("clear_credentials"):
            raise forms.ValidationError("Either replace the stored credentials or clear them, not both.")
        return cleaned


@admin.register(Registry)
class RegistryAdmin(AuditedAdmin):
    form = RegistryForm
    list_display = ["name", "provider", "url", "has_stored_credentials"]
    list_filter = ["provider"]
    search_fields = ["name", "url"]

    def save_model(self, request, obj, form, change):
        if form.cleaned_data.get("clear_credentials"):
            obj.set_credentials(None)
        elif form.cleaned_data.get("new_credentials"):
            obj.set_credentials(form.cleaned_data["new_credentials"])
        super().save_model(request, obj, form, change)

    @admin.display(boolean=True, description="stored credentials")
    def has_stored_credentials(self, obj: Registry) -> bool:
        return obj.has_stored_credentials


class WorkflowStepInline(admin.StackedInline):
    model = WorkflowStep
    extra = 0
    ordering = ["position"]


@admin.register(Workflow)
class WorkflowAdmin(AuditedAdmin):
    inlines = [WorkflowStepInline]
    list_display = ["name", "kind"]
    list_filter = ["kind"]
    search_fields = ["name"]


@admin.register(WorkflowStep)
class WorkflowStepAdmin(AuditedAdmin):
    list_display = ["workflow", "position", "from_env", "to_env", "required_approvals", "auto_promote"]
    list_filter = ["workflow"]
    list_select_related = ["workflow"]


class BucketInline(admin.TabularInline):
    model = Bucket
    extra = 0
    ordering = ["position", "env"]
    fields = [
        "env",
        "position",
        "registry",
        "repository",
        "immutable_tags",
        "allow_push_credentials",
        "allow_direct_register",
        "push_role_arn",
        "push_service_account",
        "create_repository",
        "scan_on_push",
        "encryption",
        "kms_key",
    ]


@admin.register(Integration)
class IntegrationAdmin(AuditedAdmin):
    inlines = [BucketInline]
    list_display = ["name", "kind", "workflow"]
    list_filter = ["kind", "workflow"]
    list_select_related = ["workflow"]
    search_fields = ["name"]


@admin.register(Bucket)
class BucketAdmin(AuditedAdmin):
    list_display = ["integration", "env", "registry", "repository", "immutable_tags"]
    list_filter = ["env", "registry"]
    list_select_related = ["integration", "registry"]
    search_fields = ["integration__name", "repository"]
    readonly_fields = ["current_arrival"]


@admin.register(FreezeWindow)
class FreezeWindowAdmin(AuditedAdmin):
    list_display = ["name", "environments", "starts_at", "ends_at"]
    search_fields = ["name", "reason"]


class WebhookForm(forms.ModelForm):
    """The signing secret is write-only: required when adding, optional (keep) when changing."""

    new_secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        label="Signing secret",
        help_text="Leave empty to keep the stored secret. Never displayed again.",
    )

    class Meta:
        model = Webhook
        fields = ["integration", "name", "format", "url", "events", "active"]

    def clean(self):
        cleaned = super().clean()
        if not self.instance.pk and not cleaned.get("new_secret"):
            self.add_error("new_secret", "A new webhook needs a signing secret.")
        return cleaned


@admin.register(Webhook)
class WebhookAdmin(AuditedAdmin):
    form = WebhookForm
    list_display = ["integration", "name", "format", "url", "active"]
    list_select_related = ["integration"]

    def save_model(self, request, obj, form, change):
        if form.cleaned_data.get("new_secret"):
            obj.set_secret(form.cleaned_data["new_secret"])
        super().save_model(request, obj, form, change)


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "timestamp", "actor", "action", "object_repr", "integration", "environment"]
    list_filter = ["action"]
    search_fields = ["actor", "object_repr", "integration", "request_id"]
    date_hierarchy = "timestamp"
    show_full_result_count = False  # counting a million rows on every page is slow


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Tokens are created through the token service (shown once); here they can be seen and revoked."""

    list_display = ["name", "kind", "user", "key_id", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["kind"]
    search_fields = ["name", "key_id", "user__username"]
    exclude = ["secret_hash", "pepper_id"]
    actions = ["revoke_tokens"]

    def has_change_permission(self, request, obj=None):
        # Needed for the revoke action to be offered; every field is still read-only.
        return obj is None and request.user.has_perm("ci_integrations.change_apitoken")

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in ApiToken._meta.fields if field.name not in self.exclude] + ["integrations"]

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        actor = Actor.from_request(request)
        revoked = 0
        with transaction.atomic():
            for token in queryset.filter(revoked_at__isnull=True):
                token_revoke(token=token, actor=actor)
                revoked += 1
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)


class DecisionsOnlyThroughTheService:
    """Promotions and approvals are decided only by the promotion service, which enforces four-eyes and the approver
    group. A form posted here (a state change, an approval added) is refused with 403 and, like any refused
    approval, audited as promotion.approve_refused with the promotion it aimed at."""

    refusal = "the admin cannot change promotions or record approvals; decide in the portal, where four-eyes applies"

    def promotion_aimed_at(self, request, object_id) -> Promotion | None:
        raise NotImplementedError

    @csrf_protect_m
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method == "POST":
            audit_record(
                actor=Actor.from_request(request),
                action="promotion.approve_refused",
                obj=self.promotion_aimed_at(request, object_id),
                reason=self.refusal,
                after={"via": "admin", "fields": sorted(k for k in request.POST if k != "csrfmiddlewaretoken")[:50]},
            )
            raise PermissionDenied(self.refusal)
        return super().changeform_view(request, object_id, form_url, extra_context)


class ApprovalInline(admin.TabularInline):
    model = Approval
    extra = 0
    can_delete = False
    readonly_fields = ["user", "decision", "digest", "comment", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Promotion)
class PromotionAdmin(DecisionsOnlyThroughTheService, ReadOnlyAdmin):
    """Read-only: states change only through the promotion service, which enforces four-eyes."""

    inlines = [ApprovalInline]
    list_display = ["id", "integration", "kind", "to_bucket", "tag", "state", "requested_by_label", "created_at"]
    list_filter = ["state", "kind"]
    list_select_related = ["integration", "to_bucket"]
    search_fields = ["integration__name", "digest", "tag"]
    readonly_fields = ["state"]

    def promotion_aimed_at(self, request, object_id) -> Promotion | None:
        return self.get_object(request, unquote(object_id)) if object_id else None


@admin.register(Approval)
class ApprovalAdmin(DecisionsOnlyThroughTheService, ReadOnlyAdmin):
    list_display = ["promotion", "user", "decision", "created_at"]
    list_select_related = ["user"]

    def promotion_aimed_at(self, request, object_id) -> Promotion | None:
        if object_id:
            approval = self.get_object(request, unquote(object_id))
            return approval.promotion if approval else None
        pk = request.POST.get("promotion", "")
        return Promotion.objects.filter(pk=pk).first() if pk.isdigit() and len(pk) < 19 else None


@admin.register(Artifact)
class ArtifactAdmin(ReadOnlyAdmin):
    list_display = ["integration", "short_digest", "git_sha", "branch", "created_at"]
    list_select_related = ["integration"]
    search_fields = ["digest", "git_sha", "integration__name"]


@admin.register(Arrival)
class ArrivalAdmin(ReadOnlyAdmin):
    list_display = ["bucket", "tag", "how", "arrived_at", "arrived_by"]
    list_filter = ["how"]
    list_select_related = ["bucket__integration"]


@admin.register(CheckResult)
class CheckResultAdmin(ReadOnlyAdmin):
    list_display = ["artifact", "name", "status", "reported_at"]
    list_filter = ["name", "status"]
    list_select_related = ["artifact__integration"]


@admin.register(ImportJob)
class ImportJobAdmin(ReadOnlyAdmin):
    list_display = ["id", "integration", "state", "created_at", "finished_at"]
    list_filter = ["state"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["webhook", "event", "attempts", "response_status", "delivered_at"]


@admin.register(EmailNotification)
class EmailNotificationAdmin(ReadOnlyAdmin):
    list_display = ["promotion", "kind", "attempts", "delivered_at", "given_up_at", "created_at"]
    list_filter = ["kind"]


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ["token", "key", "response_status", "created_at"]


admin.site.login_form = AdminSignInForm

# Who belongs to which role is as much an audit matter as any registry: users and groups are audited too.
admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    def user_change_password(self, request, id, form_url=""):
        # The password form saves outside save_model; record that it happened (never the password itself).
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                audit_record(
                    actor=Actor.from_request(request), action="admin.password_changed", obj=User.objects.get(pk=id)
                )
        return response


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass

"""UI forms: they parse and validate input; the services decide what is allowed."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone

from ci_integrations.models import ApiToken, Integration, validate_tag
from ci_integrations.selectors import AuditFilters

MAX_TEXT = 2000


class PromoteForm(forms.Form):
    """Confirming a promotion: an optional target tag and reason, and an override reason during a freeze."""

    tag = forms.CharField(
        required=False, max_length=128, validators=[validate_tag], help_text="Leave empty to keep the source tag."
    )
    reason = forms.CharField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))
    freeze_override_reason = forms.CharField(
        required=False,
        max_length=MAX_TEXT,
        label="Freeze override reason",
        help_text="Only for platform admins promoting through an active freeze window.",
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class RollbackForm(forms.Form):
    reason = forms.CharField(max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))


class DecisionForm(forms.Form):
    comment = forms.CharField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))


class CancelForm(forms.Form):
    reason = forms.CharField(required=False, max_length=MAX_TEXT)


def _day_start(value):
    return timezone.make_aware(datetime.combine(value, time.min)) if value else None


class AuditFilterForm(forms.Form):
    """Audit log filters from the query string; dates are whole UTC days, `until` inclusive."""

    integration = forms.CharField(required=False, max_length=63)
    environment = forms.CharField(required=False, max_length=63)
    actor = forms.CharField(required=False, max_length=150)
    action = forms.CharField(required=False, max_length=64, help_text="e.g. promotion.approved, or promotion.")
    since = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)
    after = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["until"] < data["since"]:
            raise forms.ValidationError("'To' must not be before 'From'.")
        return data

    def filters(self) -> AuditFilters:
        data = self.cleaned_data
        until = data.get("until")
        return AuditFilters(
            integration=data.get("integration", "").strip(),
            environment=data.get("environment", "").strip(),
            actor=data.get("actor", "").strip(),
            action=data.get("action", "").strip(),
            since=_day_start(data.get("since")),
            until=_day_start(until + timedelta(days=1)) if until else None,
        )


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=120)
    kind = forms.ChoiceField(choices=ApiToken.Kind.choices, initial=ApiToken.Kind.PERSONAL)
    integrations = forms.ModelMultipleChoiceField(
        queryset=Integration.objects.order_by("name"),
        required=False,
        to_field_name="name",
        help_text="CI tokens only: the integrations this token may act on.",
    )
    scopes = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the token may do; none ticked means all its kind allows.",
    )
    expires_in_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, initial=90, label="Expires in (days)", help_text="Empty: never."
    )

    def __init__(self, *args, scopes: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["scopes"].choices = [(s, s) for s in scopes]

    def clean(self):
        data = super().clean()
        if data.get("kind") == ApiToken.Kind.CI and not data.get("integrations"):
            self.add_error("integrations", "A CI token needs at least one integration.")
        return data

    @property
    def expires_at(self):
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None


class FreezeWindowForm(forms.Form):
    name = forms.CharField(max_length=120)
    environments = forms.CharField(max_length=500, help_text="Comma-separated, e.g. staging, prod")
    starts_at = forms.DateTimeField(
        label="Starts (UTC)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
    )
    ends_at = forms.DateTimeField(
        label="Ends (UTC)", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
    )
    reason = forms.CharField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_environments(self) -> list[str]:
        envs = [e.strip() for e in self.cleaned_data["environments"].split(",") if e.strip()]
        if not envs:
            raise forms.ValidationError("Name at least one environment.")
        return envs

    def clean(self):
        data = super().clean()
        if data.get("starts_at") and data.get("ends_at") and data["ends_at"] <= data["starts_at"]:
            self.add_error("ends_at", "The window must end after it starts.")
        return data

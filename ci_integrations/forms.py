"""UI forms: they parse and validate input; the services decide what is allowed."""

from __future__ import annotations

import secrets
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.validators import MaxLengthValidator
from django.utils import timezone

from ci_integrations.input_rules import control_character, control_character_problem
from ci_integrations.models import ApiToken, FreezeWindow, Integration, validate_tag
from ci_integrations.selectors import AuditFilters, environment_names
from ci_integrations.services.config_reader import DURATION, DURATION_UNITS

MAX_TEXT = 2000
FORM_ONCE_SECONDS = 24 * 3600  # how long a sent token form is remembered


def validate_printable(value: str) -> None:
    """Refuse control characters (input_rules.control_character), naming the first one, so text shown, logged or
    exported stays inert. NUL is left to Django's own validator, which every CharField runs."""
    char = control_character(value.replace("\x00", ""), multiline=True)
    if char is not None:
        problem = control_character_problem(char)
        raise forms.ValidationError(f"{problem[0].upper()}{problem[1:]}.", code="control_character")


class TextField(forms.CharField):
    """A CharField for people's text: any language, no control characters (Django already refuses NUL)."""

    default_validators = [validate_printable]


class PromoteForm(forms.Form):
    """Confirming a promotion: an optional target tag and reason, and an override reason during a freeze."""

    tag = forms.CharField(
        required=False, max_length=128, validators=[validate_tag], help_text="Leave empty to keep the source tag."
    )
    reason = TextField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))
    freeze_override_reason = TextField(
        required=False,
        max_length=MAX_TEXT,
        label="Freeze override reason",
        help_text="Only for platform admins promoting through an active freeze window.",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    not_before = forms.DateTimeField(
        required=False,
        label="Not before",
        help_text="In your browser's time zone (UTC without JavaScript). Empty: as soon as the policy allows.",
        widget=forms.DateTimeInput(
            attrs={"type": "datetime-local", "data-offset-field": "utc_offset_minutes"}, format="%Y-%m-%dT%H:%M"
        ),
    )
    utc_offset_minutes = forms.IntegerField(required=False, min_value=-840, max_value=840, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        picked = data.get("not_before")
        if picked is not None:
            # The picker sends wall-clock time; the offset of the browser's zone for that date makes it a moment.
            offset = dt_timezone(timedelta(minutes=data.get("utc_offset_minutes") or 0))
            data["not_before"] = picked.replace(tzinfo=None).replace(tzinfo=offset)
        return data


class RollbackForm(forms.Form):
    reason = TextField(max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))
    freeze_override_reason = TextField(
        required=False,
        max_length=MAX_TEXT,
        label="Freeze override reason",
        help_text="Only for platform admins rolling back through an active freeze window.",
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class DecisionForm(forms.Form):
    comment = TextField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))
    # Asked for when approving needs a fresh sign-in (see views.fresh_sign_in_needed).
    password = forms.CharField(required=False, strip=False, widget=forms.PasswordInput)


class CancelForm(forms.Form):
    reason = TextField(required=False, max_length=MAX_TEXT)


def _day_start(value):
    return timezone.make_aware(datetime.combine(value, time.min)) if value else None


class AuditFilterForm(forms.Form):
    """Audit log filters from the query string; dates are whole UTC days, `until` inclusive."""

    integration = TextField(required=False, max_length=63)
    environment = TextField(required=False, max_length=63)
    actor = TextField(required=False, max_length=150)
    action = TextField(required=False, max_length=64, help_text="e.g. promotion.approved, or promotion.")
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
            # The last day there is has no next day to stop before: it bounds nothing.
            until=_day_start(until + timedelta(days=1)) if until and until < date.max else None,
        )


class TokenCreateForm(forms.Form):
    name = TextField(max_length=120)
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
    # A value of this form only: a POST sent twice (a double click, a refresh of the answer) creates one token.
    once = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)

    def __init__(self, *args, scopes: list[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["scopes"].choices = [(s, s) for s in scopes]
        if not self.is_bound:
            self.initial["once"] = secrets.token_urlsafe(16)

    def clean(self):
        data = super().clean()
        if not data.get("once"):
            raise forms.ValidationError("This form is out of date: reload the page and fill it in again.")
        if data.get("kind") == ApiToken.Kind.CI and not data.get("integrations"):
            self.add_error("integrations", "A CI token needs at least one integration.")
        return data

    def first_submission(self, user) -> bool:
        """True the first time this form is sent by `user`; False when the same form comes again (atomic in Redis,
        so two clicks racing each other count once)."""
        return cache.add(f"token-form:{user.pk}:{self.cleaned_data['once']}", True, timeout=FORM_ONCE_SECONDS)

    @property
    def expires_at(self):
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None


class FreezeWindowForm(forms.Form):
    name = TextField(max_length=120)
    kind = forms.ChoiceField(choices=FreezeWindow.Kind.choices, initial=FreezeWindow.Kind.DENY, required=False)
    environments = TextField(max_length=500, help_text="Comma-separated, e.g. staging, prod")
    starts_at = forms.DateTimeField(
        required=False,
        label="Starts (UTC)",
        help_text="A recurring window may leave this empty: it then repeats from the beginning of time.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    ends_at = forms.DateTimeField(
        required=False,
        label="Ends (UTC)",
        help_text="One-off windows only.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    rrule = TextField(
        required=False,
        max_length=500,
        label="Repeats (RFC 5545 rule)",
        help_text="e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0. Empty for a one-off window.",
    )
    duration = TextField(required=False, max_length=20, help_text="How long each occurrence lasts, e.g. 64h or 2d.")
    time_zone = TextField(
        required=False, max_length=64, label="Time zone", initial="UTC", help_text="e.g. Europe/London"
    )
    reason = TextField(required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_duration(self) -> timedelta | None:
        text = (self.cleaned_data.get("duration") or "").strip()
        if not text:
            return None
        match = DURATION.match(text)
        if not match:
            raise forms.ValidationError("Write a duration like 90m, 64h or 2d.")
        return timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or FreezeWindow.Kind.DENY

    def clean_time_zone(self) -> str:
        return (self.cleaned_data.get("time_zone") or "").strip() or "UTC"

    def clean_environments(self) -> list[str]:
        envs = [e.strip() for e in self.cleaned_data["environments"].split(",") if e.strip()]
        if not envs:
            raise forms.ValidationError("Name at least one environment.")
        # Names are matched exactly: a window on "Prod" or "prdo" would be saved and block nothing.
        known = environment_names()
        unknown = [e for e in envs if e not in known]
        if unknown:
            raise forms.ValidationError(
                "No integration has an environment named %(unknown)s; the environments are: %(known)s.",
                code="unknown_environment",
                params={
                    "unknown": ", ".join(repr(e) for e in unknown),
                    "known": ", ".join(sorted(known)) or "none yet",
                },
            )
        return envs

    def clean(self):
        data = super().clean()
        if data.get("rrule"):
            data["ends_at"] = None
        elif not (data.get("starts_at") and data.get("ends_at")):
            self.add_error("ends_at", "A one-off window needs a start and an end; a recurring one a rule.")
        elif data["ends_at"] <= data["starts_at"]:
            self.add_error("ends_at", "The window must end after it starts.")
        return data


class EmergencyStopForm(forms.Form):
    reason = TextField(max_length=1000, help_text="Shown on every page until the stop is released.")


class UsernameLengthChecked:
    """Django's sign-in forms set the username's max_length after the field is built, so it is never validated and
    an overlong name reaches authenticate(), where django-axes fails to store it (a 500). Check it first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["username"].validators.append(MaxLengthValidator(self.fields["username"].max_length))


class SignInForm(UsernameLengthChecked, AuthenticationForm):
    pass


class AdminSignInForm(UsernameLengthChecked, AdminAuthenticationForm):
    pass

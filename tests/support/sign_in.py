"""Signing a test client in as a person would: with the session's sign-in time, which high-stakes approvals check."""

from django.test import Client
from django.utils import timezone

from ci_integrations.views import SIGNED_IN_AT


def sign_in(client: Client, user) -> Client:
    """force_login, plus the time of sign-in the sign-in page records; returns the client."""
    client.force_login(user)
    session = client.session
    session[SIGNED_IN_AT] = timezone.now().isoformat()
    session.save()
    return client

"""The password check, which P2P_LOCAL_LOGIN=0 narrows to superusers (break-glass) once single sign-on is in use."""

from django.conf import settings
from django.contrib.auth.backends import ModelBackend


class LocalPasswordBackend(ModelBackend):
    """Django's ModelBackend, refusing passwords of people who are not superusers when local sign-in is off.

    Every password path goes through here (the sign-in page, the admin's sign-in page, re-entering the password to
    approve), so turning local sign-in off cannot be walked around through one of them. Sessions are untouched
    (get_user is ModelBackend's): people signed in through the provider are logged in with this backend too.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None and not settings.P2P_LOCAL_LOGIN and not user.is_superuser:
            return None
        return user

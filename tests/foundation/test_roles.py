"""The roles migration: three groups whose permissions match DESIGN.md's user table."""

from django.contrib.auth.models import Group, User

APP = "ci_integrations"


def permissions(group: str) -> set[str]:
    return set(Group.objects.get(name=group).permissions.values_list("codename", flat=True))


def member_of(group: str) -> User:
    user = User.objects.create_user(f"member-of-{group}", password="x")
    user.groups.add(Group.objects.get(name=group))
    return User.objects.get(pk=user.pk)  # a fresh instance: permission caches are per instance


def test_the_three_roles_exist(db):
    assert set(Group.objects.values_list("name", flat=True)) >= {"release-managers", "auditors", "platform-admins"}


def test_auditors_read_everything_and_export_but_change_nothing(db):
    auditor = member_of("auditors")
    assert auditor.has_perm(f"{APP}.view_auditentry") and auditor.has_perm(f"{APP}.export_auditentry")
    assert auditor.has_perm(f"{APP}.view_promotion") and auditor.has_perm(f"{APP}.view_registry")
    assert not auditor.has_perm(f"{APP}.approve_promotion") and not auditor.has_perm(f"{APP}.request_promotion")
    assert not any(code.startswith(("add_", "change_", "delete_")) for code in permissions("auditors"))


def test_release_managers_request_and_approve_but_do_not_configure(db):
    manager = member_of("release-managers")
    assert manager.has_perm(f"{APP}.request_promotion") and manager.has_perm(f"{APP}.approve_promotion")
    assert manager.has_perm(f"{APP}.add_apitoken")  # personal tokens
    assert not manager.has_perm(f"{APP}.change_registry") and not manager.has_perm(f"{APP}.change_workflow")
    assert not manager.has_perm(f"{APP}.override_freezewindow")
    assert not manager.has_perm(f"{APP}.export_auditentry")


def test_platform_admins_configure_everything_but_can_never_alter_the_audit_log(db):
    admin = member_of("platform-admins")
    for model in ("registry", "workflow", "workflowstep", "integration", "bucket", "apitoken", "freezewindow"):
        for verb in ("add", "change", "delete", "view"):
            assert admin.has_perm(f"{APP}.{verb}_{model}"), f"{verb}_{model}"
    assert admin.has_perm(f"{APP}.override_freezewindow") and admin.has_perm(f"{APP}.export_auditentry")
    assert {"add_auditentry", "change_auditentry", "delete_auditentry"}.isdisjoint(permissions("platform-admins"))

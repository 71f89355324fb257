"""Child process for the concurrency test: get ready, wait for the go signal, then append N audit entries.

Usage: python -m tests.foundation.append_audit_entries WORKER COUNT SIGNAL_DIR (DATABASE_URL names the test database).
"""

import os
import sys
import time
from pathlib import Path

import django


def main() -> None:
    worker, count, signals = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2p_portal.settings")
    django.setup()
    from django.db import connection, transaction

    from ci_integrations.services.actors import Actor
    from ci_integrations.services.audit import audit_record

    actor = Actor.system(f"writer-{worker}")
    connection.ensure_connection()
    (signals / f"ready-{worker}").touch()
    deadline = time.monotonic() + 60
    while not (signals / "go").exists():  # every writer starts at once, so appends really contend
        if time.monotonic() > deadline:
            sys.exit("no go signal within 60 s")
        time.sleep(0.01)
    for index in range(count):
        with transaction.atomic():
            audit_record(actor=actor, action="test.append", after={"worker": worker, "index": index})


if __name__ == "__main__":
    main()

"""`manage.py p2p_worker`: an RQ worker for the `promotions` and `default` queues (or the queues named), plus the
reconciler.

Imports have a queue of their own, `imports`, served by a worker of its own (`p2p_worker imports`): an outside
registry that trickles then holds up only other imports, never a promotion or a rollback.

The reconciler runs every minute in a thread of the worker's main process, so whatever Redis lost (a flush, a
crash between commit and enqueue, a worker killed mid-copy) is put back on the queue from PostgreSQL. Running
several workers runs several reconcilers; that is harmless because every re-enqueue is a conditional update.

The scheduler runs every P2P_SCHEDULER_SECONDS (30 by default) in another thread: auto steps whose soak or freeze
ended, scheduled and waiting promotions whose moment came, approvals that expired, reminders. Several workers run
several schedulers; each change is a conditional update or happens under a row lock, so one of them wins it.

Another thread signs and publishes an audit checkpoint every few minutes when a signing key is configured. Several
workers publish several checkpoints; each is a true statement of the head, so that is harmless too.
"""

from __future__ import annotations

import logging
import threading

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection
from rq import SimpleWorker, Worker

from ci_integrations.services.audit import audit_checkpoint
from ci_integrations.services.audit_checkpoints import OFF_REASON, audit_signing_key
from ci_integrations.services.reconciler import reconcile
from ci_integrations.services.scheduler import scheduler_tick

logger = logging.getLogger("ci_integrations.reconciler")
scheduler_logger = logging.getLogger("ci_integrations.scheduler")
checkpoint_logger = logging.getLogger("ci_integrations.audit")


def reconcile_forever(stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            close_old_connections()
            count = reconcile()
            if count:
                logger.warning("reconciler re-enqueued %d job(s)", count)
        except Exception:  # noqa: BLE001 - keep reconciling; the next minute may work
            logger.exception("reconciler pass failed")
        finally:
            connection.close()


def schedule_forever(stop: threading.Event, every: float) -> None:
    """Run the scheduler every `every` seconds until `stop` is set."""
    while not stop.wait(every):
        try:
            close_old_connections()
            done = {kind: count for kind, count in scheduler_tick().items() if count}
            if done:
                scheduler_logger.info("scheduler: %s", ", ".join(f"{kind} {count}" for kind, count in done.items()))
        except Exception:  # noqa: BLE001 - keep scheduling; the next pass may work
            scheduler_logger.exception("scheduler pass failed")
        finally:
            connection.close()


def checkpoint_forever(stop: threading.Event, every: float) -> None:
    """Sign and publish the audit chain's head every `every` seconds, skipping a head already published."""
    published = None
    while not stop.wait(every):
        try:
            close_old_connections()
            checkpoint = audit_checkpoint(unless_head=published)
            if checkpoint:
                published = checkpoint.entry_id
        except Exception:  # noqa: BLE001 - keep checkpointing; the next pass may work
            checkpoint_logger.exception("audit checkpoint failed")
        finally:
            connection.close()


class Command(BaseCommand):
    help = (
        "Run an RQ worker for the named queues (default: promotions default; imports get a worker of their own:"
        " p2p_worker imports), with the reconciler every minute and the scheduler every P2P_SCHEDULER_SECONDS."
    )

    def add_arguments(self, parser):
        parser.add_argument("queues", nargs="*", default=["promotions", "default"])
        parser.add_argument("--burst", action="store_true", help="work until the queues are empty, then exit")
        parser.add_argument("--reconcile-every", type=float, default=60.0, help="seconds between reconciler passes")
        parser.add_argument("--no-reconciler", action="store_true")
        parser.add_argument(
            "--schedule-every",
            type=float,
            default=settings.P2P_SCHEDULER_SECONDS,
            help="seconds between scheduler passes (default P2P_SCHEDULER_SECONDS)",
        )
        parser.add_argument("--no-scheduler", action="store_true")
        parser.add_argument(
            "--checkpoint-every",
            type=float,
            default=settings.P2P_AUDIT_CHECKPOINT_SECONDS,
            help="seconds between signed audit checkpoints (default P2P_AUDIT_CHECKPOINT_SECONDS)",
        )
        parser.add_argument("--no-checkpoints", action="store_true")
        parser.add_argument("--simple", action="store_true", help="run jobs in this process instead of forking")
        parser.add_argument("--name", default=None)

    def handle(self, *args, **options):
        queues = [django_rq.get_queue(name) for name in options["queues"]]
        # The worker's main process must not hold a database connection a forked job would inherit.
        connection.close()
        stop = threading.Event()
        if not options["no_reconciler"]:
            thread = threading.Thread(
                target=reconcile_forever, args=(stop, options["reconcile_every"]), name="reconciler", daemon=True
            )
            thread.start()
        if not options["no_scheduler"]:
            threading.Thread(
                target=schedule_forever, args=(stop, options["schedule_every"]), name="scheduler", daemon=True
            ).start()
        if not options["no_checkpoints"]:
            if audit_signing_key() is None:
                checkpoint_logger.warning(OFF_REASON)
            else:
                threading.Thread(
                    target=checkpoint_forever,
                    args=(stop, options["checkpoint_every"]),
                    name="audit-checkpoints",
                    daemon=True,
                ).start()
        worker_class = SimpleWorker if options["simple"] else Worker
        worker = worker_class(queues, connection=queues[0].connection, name=options["name"])
        try:
            # with_scheduler runs the jobs RQ scheduled for later (webhook retries with intervals).
            worker.work(burst=options["burst"], with_scheduler=True, logging_level="INFO")
        finally:
            stop.set()

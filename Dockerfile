# syntax=docker/dockerfile:1
# P2P Portal image: one image for web (gunicorn) and worker (manage.py p2p_worker); configuration comes from the environment
# (see docs/configuration.md).
#
# Database roles: run `python manage.py migrate` from this image once per release with DATABASE_MIGRATE_URL set to the
# role that owns the tables and P2P_APP_DB_ROLE to the app's role; it migrates as the owner, then grants the app role
# its privileges (SELECT and INSERT only on the audit log). Web and worker get only DATABASE_URL, as the app role, so
# they can neither rewrite the audit log nor disable its trigger. docker-compose.yml shows the two roles.

# --- builder: install the pinned runtime requirements (not requirements-dev.txt) into a virtualenv that the final stage copies whole ---
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- final: slim runtime, no compilers, non-root ---
FROM python:3.11-slim
# DEBUG=0: the image runs in production mode (unless DEBUG=1 is given at run time), so without SECRET_KEY,
# P2P_FERNET_KEYS and P2P_TOKEN_PEPPERS it refuses to start, naming what is missing, rather than run in DEBUG with
# the public development keys.
ENV DEBUG=0 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DJANGO_SETTINGS_MODULE=p2p_portal.settings \
    P2P_VAR_DIR=/app/var \
    WEB_CONCURRENCY=4
RUN groupadd --system --gid 10001 p2p \
 && useradd --system --uid 10001 --gid p2p --home-dir /app --no-create-home --shell /usr/sbin/nologin p2p
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# Code stays owned by root (the app cannot rewrite itself); only var/ is the app's.
COPY . /app
# Static files are collected at build time with throwaway production values; none of them ends up in the image's
# environment, and real ones are required at run time (settings refuse to start without them).
RUN SECRET_KEY=collectstatic-at-build-time-only-this-value-never-serves-a-request \
    P2P_FERNET_KEYS=build-time-placeholder \
    P2P_TOKEN_PEPPERS=build=build-time-placeholder \
    ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput \
 && mkdir -p /app/var/audit-checkpoints \
 && chown p2p:p2p /app/var /app/var/audit-checkpoints
USER p2p
EXPOSE 8000
# /healthz is exempt from the HTTPS redirect; the Host header is the first ALLOWED_HOSTS entry so the request is
# accepted whatever hosts the deployment allows.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-c", "import os, urllib.request; host = os.environ.get('ALLOWED_HOSTS', '').split(',')[0].strip().lstrip('*.') or 'localhost'; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:8000/healthz', headers={'Host': host}), timeout=4)"]
# gthread workers of 2 threads each; gunicorn takes the number of workers from WEB_CONCURRENCY (default 4 above, about
# 2 per core of a 2-core host; set it to 2 × cores at run time).
CMD ["gunicorn", "p2p_portal.wsgi", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "2", "--access-logfile", "-", "--graceful-timeout", "30", "--no-control-socket"]

"""The Dockerfile's web command is one gunicorn accepts, and its worker count follows WEB_CONCURRENCY."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_docker_web_command_parses_and_takes_its_workers_from_web_concurrency(tmp_path):
    command = json.loads(re.findall(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)[-1])
    assert command[:2] == ["gunicorn", "p2p_portal.wsgi"]
    assert int(re.search(r"^\s+WEB_CONCURRENCY=(\d+)", DOCKERFILE, flags=re.MULTILINE).group(1)) >= 2
    env = {**os.environ, "WEB_CONCURRENCY": "7", "P2P_VAR_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    # --print-config resolves the settings as gunicorn would run them (loading the app), then exits.
    result = subprocess.run(
        [gunicorn, "--print-config", *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    settings = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, flags=re.MULTILINE))
    assert settings["workers"] == "7", "a --workers flag in CMD would override WEB_CONCURRENCY"
    assert (settings["worker_class"], settings["threads"]) == ("gthread", "2")

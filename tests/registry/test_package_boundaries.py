"""The registry package is a library with no Django in it: the services layer passes everything in (specs, guards)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ci_integrations.registry as package


def test_importing_every_module_of_the_registry_package_loads_no_django():
    modules = [
        f"{package.__name__}.{m.name}" for m in pkgutil.walk_packages(package.__path__) if "providers." not in m.name
    ]
    modules += [f"{package.__name__}.providers.generic", f"{package.__name__}.providers.dockerhub"]
    check = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    check += "loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\nprint(loaded)\n"

    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)

    assert run.stdout.strip() == "[]", run.stdout
    assert len(modules) >= 10  # the walk found the package's modules, not nothing

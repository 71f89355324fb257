"""The house rules that keep the code easy to change: imports run one way, and no service module grows into a maze."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SERVICE_MODULE_MAX_LINES = 500


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_forbid_cycles_and_django_in_the_registry_package():
    by_name = {contract["name"]: contract for contract in contracts()}
    cycles = by_name["No cycles among ci_integrations modules"]
    assert cycles["type"] == "acyclic_siblings" and cycles["ancestors"] == ["ci_integrations"]
    registry = by_name["ci_integrations.registry imports no Django"]
    assert registry["source_modules"] == ["ci_integrations.registry"] and "django" in registry["forbidden_modules"]
    layers = next(contract for contract in contracts() if contract["type"] == "layers")["layers"]
    order = [layer.split(" | ")[0] for layer in layers]
    assert order.index("ci_integrations.jobs") < order.index("ci_integrations.services")
    assert order.index("ci_integrations.services") < order.index("ci_integrations.models")
    assert order.index("ci_integrations.models") < order.index("ci_integrations.registry")


def test_every_import_contract_is_kept():
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(contracts())} kept, 0 broken" in result.stdout


def test_a_cycle_between_services_breaks_the_contracts(tmp_path):
    """The contracts see imports inside functions too, so a lazy import cannot hide a cycle."""
    package = tmp_path / "ci_integrations"
    for source in (ROOT / "ci_integrations").rglob("*.py"):
        target = package / source.relative_to(ROOT / "ci_integrations")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    arrivals = package / "services" / "arrivals.py"
    arrivals.write_text(arrivals.read_text() + "\n\ndef _later():\n    from ci_integrations.services import copying\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "No cycles among ci_integrations modules BROKEN" in result.stdout


def test_no_service_module_is_over_five_hundred_lines():
    """Past that, a module wants splitting along its own sections (one room per stage of a promotion's life)."""
    sizes = {
        path.name: len(path.read_text().splitlines()) for path in (ROOT / "ci_integrations" / "services").glob("*.py")
    }
    assert {name: lines for name, lines in sizes.items() if lines > SERVICE_MODULE_MAX_LINES} == {}

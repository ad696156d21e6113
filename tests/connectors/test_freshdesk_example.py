"""The examples/freshdesk plugin: found through its entry point, and its own tests run here too."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

from connectors.registry import GROUP, ConnectorRegistry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "freshdesk"
if str(EXAMPLE) not in sys.path:  # as if `pip install -e examples/freshdesk` had been run
    sys.path.insert(0, str(EXAMPLE))


def _load_example_tests():
    """examples/freshdesk/tests/test_freshdesk.py under a unique module name (its 'tests' is not ours)."""
    spec = importlib.util.spec_from_file_location("tieline_freshdesk_tests", EXAMPLE / "tests" / "test_freshdesk.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Re-export the example's tests and fixtures so pytest collects them as part of `make test`.
_example = _load_example_tests()
globals().update({k: v for k, v in vars(_example).items() if k.startswith(("Test", "test_", "desk"))})


def test_entry_point_registers_the_freshdesk_type():
    """The example's entry point loads into a registry under the name 'freshdesk', with no failures."""
    ep = EntryPoint(name="freshdesk", value="tieline_freshdesk.connector:FreshdeskConnector", group=GROUP)
    registry = ConnectorRegistry.from_entry_points(entry_points=[ep])
    assert registry.failures == {}
    assert registry.types["freshdesk"].__name__ == "FreshdeskConnector"


def test_entry_point_matches_the_example_pyproject():
    """pyproject.toml of the example declares exactly the entry point tested above."""
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "tieline-freshdesk"
    assert project["entry-points"][GROUP] == {"freshdesk": "tieline_freshdesk.connector:FreshdeskConnector"}

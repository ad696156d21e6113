"""The shared outbound client loads aiohttp only when first needed (start-up, bench/startup.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bus.security.outbound import LazyTransport, guarded_client

ROOT = Path(__file__).resolve().parents[3]


def test_loading_the_shipped_flows_does_not_import_aiohttp(tmp_path):
    """Runtime.from_file on the shipped flows builds the client without loading aiohttp."""
    code = textwrap.dedent("""
        import sys
        from bus.runtime import Runtime
        runtime = Runtime.from_file("flows.yaml", env={"TIELINE_DATA_DIR": sys.argv[1]})
        print("aiohttp" in sys.modules, type(runtime.http).__name__)
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "GuardedClient"]


async def test_warm_up_builds_the_guarded_transport_once():
    client = guarded_client(allow_hosts=["localhost"])
    lazy = client.lazy
    assert isinstance(lazy, LazyTransport) and lazy._real is None
    client.warm_up().join(timeout=30)
    built = lazy._real
    assert type(built).__name__ == "GuardedTransport"
    assert built.guard.policy.allows_host("localhost")
    assert lazy.real() is built  # not built twice
    await client.aclose()


async def test_unverified_copy_is_lazy_too_and_keeps_the_policy():
    client = guarded_client(allow_cidrs=["10.0.0.0/8"])
    loose = client.unverified()
    assert loose.lazy._real is None and loose.options["verify"] is False
    assert loose.lazy.real().guard.policy.networks == client.lazy.real().guard.policy.networks
    await loose.aclose()
    await client.aclose()

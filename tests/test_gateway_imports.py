"""Imports and the gateway: `requests` stays unimported (stripe's unused sync client), and a warm
request imports nothing (bench/RESULTS.md)."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys

from tests.simgateway import sim_gateway


def test_gateway_import_does_not_load_requests_and_leaves_it_importable() -> None:
    code = (
        "import sys, kiosk.gateway, stripe\n"
        "print('requests' in sys.modules)\n"
        "import requests\n"
        "print(type(stripe.HTTPXClient()).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "HTTPXClient"]


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Records every import that reaches the finders: one not already in sys.modules."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, _path: object, _target: object = None) -> None:
        self.names.append(fullname)


async def test_a_request_imports_nothing_once_warm() -> None:
    # httpcore asks `import sniffio` on every request; if that import failed, each ask would
    # search sys.path again (kiosk depends on sniffio for that reason).
    async with sim_gateway() as rig:
        await rig.gw.retrieve_reader()  # warm: whatever is imported lazily is imported now
        watch = _ImportWatch()
        sys.meta_path.insert(0, watch)
        try:
            for _ in range(3):
                await rig.gw.retrieve_reader()
        finally:
            sys.meta_path.remove(watch)
    assert watch.names == []

"""Importing the gateway leaves `requests` unimported (stripe's unused sync client; bench/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys


def test_gateway_import_does_not_load_requests_and_leaves_it_importable() -> None:
    code = (
        "import sys, kiosk.gateway, stripe\n"
        "print('requests' in sys.modules)\n"
        "import requests\n"
        "print(type(stripe.HTTPXClient()).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "HTTPXClient"]

"""`kiosk run` loads cryptography only when it needs a key (about 10 MB resident on a Pi)."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> bool:
    probe = f"import sys\n{code}\nprint(any(m.split('.')[0] == 'cryptography' for m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.split()[-1] == "True"


def test_the_daemon_and_its_fleet_agent_import_without_cryptography() -> None:
    assert not _loaded_after("import kiosk.cli, kiosk.service, kiosk.fleet.agent, kiosk.fleet.updates")


def test_a_configured_public_key_is_checked_without_it_and_loads_it_at_the_first_verify() -> None:
    key = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    assert not _loaded_after(f"from kiosk.fleet import signing\nsigning.public_key({key!r})")
    assert _loaded_after(
        f"from kiosk.fleet import signing\nsigning.verify({{'sig': 'AA=='}}, signing.public_key({key!r}))"
    )
    bad = "from kiosk.errors import ConfigError\nfrom kiosk.fleet import signing\n"
    bad += "try:\n    signing.public_key('c2hvcnQ=')\nexcept ConfigError:\n    pass\nelse:\n    raise SystemExit(1)"
    assert not _loaded_after(bad)  # 5 bytes: refused without loading it


def test_a_key_loads_it_and_signatures_still_verify() -> None:
    code = (
        "from kiosk.fleet import signing\n"
        "key = signing.generate()\n"
        "public = signing.public_key(signing.public_key_text(key.public_key()))\n"
        "doc = signing.sign({'a': 1}, key)\n"
        "assert signing.verify(doc, public) and not signing.verify({**doc, 'a': 2}, public)\n"
        "assert signing.load_private(signing.private_pem(key)).public_key() == key.public_key()\n"
    )
    assert _loaded_after(code)

"""Real kiosk wheels for the update tests, built from this tree without a build backend or network.

A wheel is a zip of the package and a `.dist-info` (METADATA, WHEEL, entry_points.txt, RECORD);
`build` writes exactly what hatchling would for kiosk, with the version and any source edits a
test asks for (a broken release is this tree with one deliberate fault).
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(out_dir: Path, version: str, *, edits: dict[str, tuple[str, str]] | None = None) -> Path:
    """A wheel of kiosk at `version`; `edits` maps a path under kiosk/ to (old, new) text to replace once."""
    edits = dict(edits or {})
    files: dict[str, bytes] = {}
    for path in sorted((ROOT / "kiosk").rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        name = path.relative_to(ROOT).as_posix()
        data = path.read_bytes()
        if name == "kiosk/__init__.py":
            data = re.sub(rb'__version__ = "[^"]*"', f'__version__ = "{version}"'.encode(), data)
        if name in edits:
            old, new = edits.pop(name)
            text = data.decode()
            assert text.count(old) == 1, f"{name}: {old!r} is not there exactly once"
            data = text.replace(old, new).encode()
        files[name] = data
    assert not edits, f"no such files: {sorted(edits)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    info = f"kiosk-{version}.dist-info"
    metadata = [
        f"Metadata-Version: 2.1\nName: kiosk\nVersion: {version}\nRequires-Python: {project['requires-python']}"
    ]
    metadata += [f"Requires-Dist: {dep}" for dep in project["dependencies"]]
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: kiosk-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = b"[console_scripts]\nkiosk = kiosk.cli:main\n"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"kiosk-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return wheel


def make_release(releases: Path, wheel: Path, version: str) -> Path:
    """The first release, as docs/install.md makes it, with this test environment's packages inherited.

    `--without-pip` and the test environment's pip keep it quick; releases made by updates get
    their own pip (kiosk/fleet/updates.py).
    """
    target = releases / version
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = subprocess.run(
        [str(target / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    inherited = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(site) / "_kiosk_inherit.pth").write_text("\n".join(inherited) + "\n")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
            "--quiet", "--no-deps", "--no-index", "--no-cache-dir", "--disable-pip-version-check", str(wheel),
        ],
        check=True,
    )  # fmt: skip
    (target / ".kiosk-release").write_text(f"{version}\n")
    return target

"""Builds the Debian package from the working tree: `python3 -m tests.peers.package OUT [VERSION]`.

Runs dpkg-buildpackage on a copy of the tree, with Debian's own python3 first on PATH (pybuild
must not pick up a venv's or pyenv's). With VERSION, a changelog entry for it is added to the
copy, which the upgrade test uses.
"""

from __future__ import annotations

import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def build(out: Path, version: str | None = None) -> Path:
    source = out / "src"
    source.mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    archive = subprocess.run(["tar", "-cf", "-", *files], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-xf", "-", "-C", str(source)], input=archive, check=True)
    if version:
        changelog = source / "debian" / "changelog"
        entry = (
            f"aktin-broker-sftp ({version}) unstable; urgency=medium\n\n  * Test build.\n\n"
            f" -- AKTIN <it-support@aktin.org>  {formatdate(usegmt=False)}\n\n"
        )
        changelog.write_text(entry + changelog.read_text())
    done = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, capture_output=True, text=True, env={"PATH": SYSTEM_PATH}
    )
    if done.returncode:
        raise RuntimeError(f"dpkg-buildpackage failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    (deb,) = out.glob("aktin-broker-sftp_*_all.deb")
    return deb


if __name__ == "__main__":
    print(build(Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else None))

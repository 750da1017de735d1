"""Run mypy on the package under its installed names (meteovision.*).

The folders map onto the namespace through setuptools' package-dir, which mypy
cannot follow; a throw-away tree of symlinks gives it the real module names.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "datasets", "models", "pipeline", "workflows")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ns = Path(tmp) / "meteovision"
        ns.mkdir()
        for name in PACKAGES:
            (ns / name).symlink_to(ROOT / name, target_is_directory=True)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        for name in PACKAGES:
            cmd += ["-p", f"meteovision.{name}"]
        return subprocess.call(cmd, cwd=tmp, env={"MYPYPATH": tmp, "PATH": "/usr/bin:/bin"})


if __name__ == "__main__":
    sys.exit(main())

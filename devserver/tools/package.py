"""The deployment package, built into a folder: what `azd deploy` ships, bytecode included.

``python -m devserver.tools.package DIR``: the files ``.funcignore`` does not exclude
(as azd zips the folder), copied into DIR, then compiled as azd's prepackage hook does
(``infra/hooks/prepackage.py``). ``make lint`` runs the Functions doctor on it, and the
packaging tests check it.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "infra" / "hooks" / "prepackage.py"


def ignored_patterns(root: Path = ROOT) -> list[str]:
    """``.funcignore``'s patterns: names, or shell patterns, each matched against every part of a path
    (the form this project's file uses; azd leaves the file itself out too)."""
    lines = (root / ".funcignore").read_text().splitlines()
    return [*(line.strip() for line in lines if line.strip() and not line.startswith("#")), ".funcignore"]


def shipped(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative, POSIX) goes into the package: no part of it matches a pattern."""
    return not any(fnmatch.fnmatch(part, pattern) for part in Path(path).parts for pattern in patterns)


def deployed_files(root: Path = ROOT) -> list[str]:
    """The files that deploy: what azd zips, every file of the folder that ``.funcignore`` does not
    exclude (tracked or not: caches a tool left behind too)."""
    patterns = [*ignored_patterns(root), "__pycache__"]  # (the app's bytecode is compiled fresh into the package)
    found = []
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if shipped(name, patterns)]  # never walks into .venv ...
        base = Path(folder).relative_to(root)
        found += [(base / name).as_posix() for name in files if shipped(name, patterns)]
    return sorted(found)


def build(target: Path) -> Path:
    for path in deployed_files():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target / path)
    done = subprocess.run([sys.executable, str(HOOK), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    sys.stderr.write(done.stderr)  # (a warning: no Python 3.11, no bytecode)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.tools.package", description=__doc__.split("\n")[0])
    parser.add_argument("target", type=Path, help="an empty or new folder")
    build(parser.parse_args(argv).target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployment package, built into a folder: what `azd deploy` ships, bytecode included.

``python -m devserver.tools.package DIR``: the tracked files ``.funcignore`` does not
exclude, copied into DIR, then compiled as azd's prepackage hook does
(``infra/hooks/prepackage.py``). ``make lint`` runs the Functions doctor on it, and the
packaging tests check it.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "infra" / "hooks" / "prepackage.py"


def ignored_patterns() -> list[str]:
    lines = (ROOT / ".funcignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def shipped(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` (relative, POSIX) goes into the package: no part of it matches a pattern."""
    return not any(fnmatch.fnmatch(part, pattern) for part in Path(path).parts for pattern in patterns)


def deployed_files() -> list[str]:
    """The tracked files that deploy."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    patterns = ignored_patterns()
    return [path for path in tracked.split() if shipped(path, patterns)]


def build(target: Path) -> Path:
    for path in deployed_files():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target / path)
    done = subprocess.run([sys.executable, str(HOOK), str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.tools.package", description=__doc__.split("\n")[0])
    parser.add_argument("target", type=Path, help="an empty or new folder")
    build(parser.parse_args(argv).target)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""azd prepackage hook: the deployment package carries the app's bytecode.

Flex Consumption runs the app from a read-only package: Python cannot write
``__pycache__`` there, so every module the package carries no bytecode for is
compiled from source at every cold start. This compiles ``function_app.py`` and
``shared/`` into ``__pycache__/*.cpython-311.pyc`` beside them (``.funcignore`` lets
those through) with checked-hash invalidation: valid whatever timestamps the files
get when the package is unpacked, and never stale (Python checks each against its
source's hash, far cheaper than compiling; a source edited after packaging is simply
compiled again). Bytecode is per Python version: this needs the Functions runtime's,
3.11, and looks for it when the Python running it is another.

``python infra/hooks/prepackage.py [ROOT]`` (default: this checkout); ``make lint``
runs it on a copy of the package (``devserver/tools/package.py``).
"""

from __future__ import annotations

import compileall
import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

RUNTIME = (3, 11)  # infra/modules/function.bicep: functionAppConfig.runtime
ROOT = Path(__file__).resolve().parents[2]


def clean(root: Path) -> None:
    """No bytecode from local runs ships (timestamp-based, or another Python's: .funcignore lets it through)."""
    for cache in [root / "__pycache__", *(root / "shared").rglob("__pycache__")]:
        shutil.rmtree(cache, ignore_errors=True)


def compile_app(root: Path) -> bool:
    clean(root)
    mode = py_compile.PycInvalidationMode.CHECKED_HASH
    return bool(compileall.compile_file(root / "function_app.py", quiet=1, invalidation_mode=mode)
                and compileall.compile_dir(root / "shared", quiet=1, invalidation_mode=mode))


def _is_runtime(python: str) -> bool:
    """Whether ``python`` is the runtime's version (checked before handing over to it: never a loop)."""
    check = f"import sys; sys.exit(sys.version_info[:2] != {RUNTIME!r})"
    return subprocess.run([python, "-c", check], capture_output=True).returncode == 0


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else ROOT
    if sys.version_info[:2] != RUNTIME:
        clean(root)
        for python in (shutil.which("python3.11"), ROOT / ".venv" / "bin" / "python"):
            if python and Path(python).exists() and _is_runtime(str(python)):
                return subprocess.call([str(python), __file__, str(root)])
        print("prepackage: no Python 3.11 found: the package ships without the app's bytecode, so each cold "
              "start compiles its modules", file=sys.stderr)
        return 0
    if not compile_app(root):
        print("prepackage: compiling the app failed", file=sys.stderr)
        return 1
    print(f"prepackage: bytecode for function_app.py and shared/ (Python {sys.version.split()[0]}, checked-hash)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

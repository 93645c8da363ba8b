"""Offline checks of the Bicep template under infra/ (`make infra-check`).

Runs in .venv-infra (requirements-infra.txt: checkov, which pins pycep-parser), not in .venv:

* every ``.bicep`` file parses with pycep-parser, the parser checkov itself uses;
* ``checkov --framework bicep --skip-download`` on infra/ reports no failed check and no parsing
  error, and every skipped check is skipped inline with a reason (``// checkov:skip=ID: why``).

``--dump`` prints the parsed files as JSON instead (path relative to infra/ -> pycep's tree), for
tests/test_infra.py, which runs in .venv and so cannot import pycep itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def parse_all(infra: Path = INFRA) -> tuple[dict[str, object], list[str]]:
    """pycep's parse of every .bicep file under ``infra`` (by path relative to it), and the errors."""
    from pycep import BicepParser

    trees: dict[str, object] = {}
    errors: list[str] = []
    for path in sorted(infra.rglob("*.bicep")):
        name = path.relative_to(infra).as_posix()
        try:
            trees[name] = BicepParser().parse(file_path=path)
        except Exception as exc:  # lark's errors carry the line and column
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return trees, errors


def run_checkov(infra: Path = INFRA) -> dict:
    # Offline: no policy download, no id mapping from the platform, no PyPI version check.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "checkov"), "--framework", "bicep", "--skip-download",
         "--directory", str(infra), "--output", "json"],
        capture_output=True, text=True, env=env, timeout=600)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"checkov gave no JSON report (exit {done.returncode}):\n"
                         f"{done.stdout}\n{done.stderr}") from None
    reports = report if isinstance(report, list) else [report]
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    if len(bicep) != 1:
        raise SystemExit(f"expected one bicep report from checkov, got {[r.get('check_type') for r in reports]}")
    return bicep[0]


def problems_in(report: dict) -> list[str]:
    problems = []
    summary = report["summary"]
    if summary["resource_count"] == 0:
        problems.append("checkov found no resources in infra/")
    for check in report["results"]["failed_checks"]:
        problems.append(f"FAILED {check['check_id']} {check['check_name']}: {check['resource']} "
                        f"({check['file_path']}:{check['file_line_range'][0]})")
    for path in report["results"].get("parsing_errors", []):
        problems.append(f"PARSING ERROR {path}")
    if summary["parsing_errors"] and not report["results"].get("parsing_errors"):
        problems.append(f"{summary['parsing_errors']} parsing error(s)")
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()
        if not reason or reason == "No comment provided":
            problems.append(f"SKIPPED WITHOUT A REASON {check['check_id']}: {check['resource']} ({check['file_path']})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump", action="store_true", help="print pycep's parse of every .bicep file as JSON")
    parser.add_argument("--infra", type=Path, default=INFRA, help="folder to check (default: infra/)")
    args = parser.parse_args(argv)

    trees, errors = parse_all(args.infra)
    if args.dump:
        json.dump({"trees": trees, "errors": errors}, sys.stdout, default=str)
        return 1 if errors else 0
    for error in errors:
        print(f"pycep-parser: {error}")
    print(f"pycep-parser: {len(trees)} of {len(trees) + len(errors)} .bicep files parsed")

    report = run_checkov(args.infra)
    summary = report["summary"]
    problems = problems_in(report)
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        print(f"skipped {check['check_id']} on {check['resource']}: {reason.strip()}")
    for problem in problems:
        print(problem)
    print(f"checkov {summary['checkov_version']} (bicep): {summary['resource_count']} resources, "
          f"{summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped, "
          f"{summary['parsing_errors']} parsing errors")
    return 1 if errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""``make caller-key NAME=team-a``: a new random caller key, printed once, and the entry to add.

The app stores only the key's SHA-256 digest (``COMPLETIONS_CALLER_KEYS``), so this is
the one time the key is shown: hand it to the caller (a Key Vault secret of theirs,
say) and add the entry to the setting.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys

from shared.config.caller_keys import NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make caller-key NAME=<caller>")
    parser.add_argument("name", help="the caller's name (1 to 64 letters, digits, . _ -), as logs will show it")
    args = parser.parse_args(argv)
    if not NAME.fullmatch(args.name):  # (the names the setting accepts)
        print("NAME must be 1 to 64 letters, digits, . _ or -", file=sys.stderr)
        return 2
    key = secrets.token_urlsafe(32)
    entry = {args.name: hashlib.sha256(key.encode()).hexdigest()}
    print(f"key for {args.name} (shown once; the app keeps only its digest):\n  {key}\n")
    print("add this entry to the JSON object in COMPLETIONS_CALLER_KEYS:")
    print(f"  {json.dumps(entry)[1:-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

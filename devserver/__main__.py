"""``python -m devserver``: serve the app's HTTP functions locally (see devserver.host)."""

import sys

from .host import main

sys.exit(main())

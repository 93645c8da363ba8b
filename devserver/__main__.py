"""``python -m devserver``: serve the app locally, every trigger (see devserver.host)."""

import sys

from .host import main

sys.exit(main())

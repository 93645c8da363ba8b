"""``python -m devserver``: serve the app locally, every trigger (see devserver.host.host)."""

import sys

from .host.host import main

sys.exit(main())

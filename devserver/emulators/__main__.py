"""``python -m devserver.emulators``: the Azure OpenAI emulator and the managed-identity endpoint
(see devserver.emulators.runner)."""

import sys

from .runner import main

sys.exit(main())

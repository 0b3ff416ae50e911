"""``python -m fastbp``: the digits demo (see ``fastbp.cli``)."""

import sys

from .cli import main

sys.exit(main())

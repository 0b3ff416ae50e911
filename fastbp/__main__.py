"""``python -m fastbp``: the digits demo (see ``fastbp.cli``)."""

import sys

from .cli import main

sys.exit(main(prog="python -m fastbp"))  # argv[0] is __main__.py here: name the command as typed

"""``python -m turnout.engine serve ...``: see :mod:`turnout.engine.main`."""

import sys

from turnout.engine.main import main

sys.exit(main())

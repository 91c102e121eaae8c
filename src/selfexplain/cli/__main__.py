"""``python -m selfexplain.cli``: the ``selfexplain`` command."""

import sys

from selfexplain.cli import main

sys.exit(main())

"""``python -m scale``: the scale-out demo (see ``python -m scale --help``)."""

import sys

from scale.cli import main

sys.exit(main())

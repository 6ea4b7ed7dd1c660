"""``python -m voxbridge`` is the ``voxbridge`` command."""

import sys

from .cli import main

sys.exit(main())

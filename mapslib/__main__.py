"""`python -m mapslib ...`: see mapslib/cli.py."""

import sys

from mapslib.cli import main

sys.exit(main())

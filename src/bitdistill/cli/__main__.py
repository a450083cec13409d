"""`python -m bitdistill.cli ...` runs the same CLI as the `bitdistill` entry point."""

import sys

from . import main

sys.exit(main())

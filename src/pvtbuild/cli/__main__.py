"""`python -m pvtbuild.cli` (as torchrun starts it)."""

import sys

from pvtbuild.cli import main

sys.exit(main())

"""`python -m pvtbuild`."""

import sys

from pvtbuild.cli import main

sys.exit(main())

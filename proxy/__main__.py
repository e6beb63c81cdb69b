"""`python -m proxy` runs the same command line as the `pairproxy` script."""

import sys

from proxy.cli import main

sys.exit(main())

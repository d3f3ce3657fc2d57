"""`python -m vmbackup` runs the `vmbackup` command."""

import sys

from vmbackup.cli import main

sys.exit(main())

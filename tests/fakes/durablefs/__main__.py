"""`python -m tests.fakes.durablefs`: run the durablefs daemon (see daemon.py)."""

import sys

from tests.fakes.durablefs.daemon import main

sys.exit(main())

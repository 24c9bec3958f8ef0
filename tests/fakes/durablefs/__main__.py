"""`python -m tests.fakes.durablefs`: run the durablefs daemon (see daemon.py)."""

import os
import sys

# mfusepy looks for libfuse 2 first; durablefs is written for libfuse 3 (Debian's fuse3).
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

from tests.fakes.durablefs.daemon import main  # after the variable is set

sys.exit(main())

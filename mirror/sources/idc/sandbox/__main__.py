"""``python -m mirror.sources.idc.sandbox``: run a local IDC until interrupted."""

import sys

from mirror.sources.idc.sandbox import main

sys.exit(main())

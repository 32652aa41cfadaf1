import sys

from mirror.sources.isic_v2.sandbox.server import main

sys.exit(main())

"""An offline, deterministic imitation of the ISIC Archive API v2 and its file hosts.

    from mirror.sources.isic_v2.sandbox import start
    with start(images=100, seed=0) as sb:
        sb.url            # "http://127.0.0.1:PORT/api/v2"
        sb.files_url      # "http://127.0.0.1:PORT2" (public bucket + signed private CDN)
        sb.stats()        # requests per route pattern, plus "total"
        sb.mutate(add=2, publish=1, edit=3, replace=1, delete=1, midnight=True)

Behaviour follows the research note ``isic_v2_api.md``; ``python -m
mirror.sources.isic_v2.sandbox --port 8000`` serves where ``isic --dev`` looks.
"""

from mirror.sources.isic_v2.sandbox.api import SANDBOX_TOKEN, STAFF_TOKEN
from mirror.sources.isic_v2.sandbox.data import MUTATIONS
from mirror.sources.isic_v2.sandbox.server import SandboxV2, main, run_forever, start

__all__ = ["MUTATIONS", "SANDBOX_TOKEN", "STAFF_TOKEN", "SandboxV2", "main", "run_forever",
           "start"]

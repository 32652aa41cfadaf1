"""The sandbox archive: a local, faithful imitation of the ISIC Archive API v1.

    from mirror.sources.isic_v1.sandbox import serve
    with serve(images=50, seed=1) as sb:
        sb.url            # "http://127.0.0.1:PORT/api/v1"
        sb.stats()        # requests per endpoint, plus "total"
        sb.mutate(add=2, update=3, remove=1)

See ``docs/sandbox.md`` for what it imitates and what it does not.
"""

from mirror.sources.isic_v1.sandbox.api import SANDBOX_LOGIN, SANDBOX_PASSWORD
from mirror.sources.isic_v1.sandbox.server import Sandbox, make_sandbox, run_forever, serve

__all__ = ["SANDBOX_LOGIN", "SANDBOX_PASSWORD", "Sandbox", "make_sandbox", "run_forever",
           "serve"]

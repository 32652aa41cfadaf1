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

import importlib

_HOMES = {"SANDBOX_TOKEN": "api", "STAFF_TOKEN": "api", "MUTATIONS": "data",
          "SandboxV2": "server", "main": "server", "run_forever": "server", "start": "server"}


def __getattr__(name: str):
    """The sandbox's names, imported when first asked for: ``mirror serve`` imports the
    API shape, which uses this package's search language and JSON encoding, without
    starting (or even importing) the sandbox's servers."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MUTATIONS", "SANDBOX_TOKEN", "STAFF_TOKEN", "SandboxV2", "main", "run_forever",
           "start"]

"""``make demo``: start the sandbox archive, mirror 200 images, show what to do next.

Run as ``python -m mirror.demo [--root demo-mirror] [--images 200]``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from mirror.sources.base import spec_of
from mirror.status import mirror_status, status_lines
from mirror.sync import SyncOptions, sync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="demo-mirror")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(args.root)
    # the demo runs ISIC v1's sandbox, found through the registry like any source's
    sandbox_module = spec_of("isic-v1").sandbox.split(":")[0]
    serve = importlib.import_module(sandbox_module).serve
    with serve(images=args.images, seed=args.seed, private_fraction=0.0) as sandbox:
        print(f"sandbox archive: {sandbox.url} ({args.images} images, seed {args.seed})")
        started = time.monotonic()
        summary = sync(root, sandbox.url, SyncOptions())
        print(f"first sync into {root}/ took {time.monotonic() - started:.1f} s:")
        for line in summary.summary_lines():
            print("  " + line)
        again = sync(root, sandbox.url, SyncOptions())
        print(f"re-sync of the unchanged archive: {again.requests} requests, "
              f"{again.seconds:.2f} s")
    print()
    for line in status_lines(mirror_status(root)):
        print("  " + line)
    print("\nThe sandbox is gone; the mirror works offline. Put mirror on PATH, then try:")
    print("  . .venv/bin/activate")
    print(f"  mirror status --root {root}")
    print(f"  mirror verify --root {root}")
    return 0 if summary.ok and again.ok else 1


if __name__ == "__main__":
    sys.exit(main())

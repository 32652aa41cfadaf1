"""A wheel holds every package of the tree: pyproject lists them by hand (migrations/ ships
as ``mirror.migrations``, which automatic discovery cannot map), so a new package that is
not listed would work in an editable checkout and be missing from an installed mirror."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_under_mirror_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts)
             for init in (REPO / "mirror").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"mirror.migrations", "mirror.migrations.versions"} <= listed


def test_the_core_and_the_cli_import_no_s3_client():
    """boto3 and obstore come with the ``idc`` and ``fast`` extras: a mirror of ISIC or
    TCIA installed without them must start and sync, so only the IDC source itself and a
    direct download (:mod:`mirror.sources.direct`, when one is made) may import them."""
    import subprocess
    import sys

    code = ("import sys, mirror, mirror.sources, mirror.cli, mirror.sources.idc.spec, "
            "mirror.sync, mirror.sources.direct, mirror.sources.isic_v2.source; "
            "print(sorted(m for m in ('boto3', 'botocore', 'obstore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"

"""kssm_core is headless: importing every module of it never imports textual (nor the kssm_tui cockpit)."""

from __future__ import annotations

import subprocess
import sys

from kssm_testkit import REPO, child_env

PROBE = r"""
import importlib, pkgutil, sys
import kssm_core
names = sorted(m.name for m in pkgutil.walk_packages(kssm_core.__path__, "kssm_core."))
for name in names:
    if name == "kssm_core.__main__":
        continue  # running it would parse sys.argv
    importlib.import_module(name)
from kssm_core.cli import build_parser
build_parser()  # registering every subcommand must not pull a UI in either
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "textual_plotext", "kssm_tui"))
print(len(names))
print(",".join(bad))
"""


def test_importing_all_of_kssm_core_never_imports_textual():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=child_env(), cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    count, bad = int(lines[0]), (lines[1] if len(lines) > 1 else "")
    assert count >= 10, "the probe found suspiciously few modules"
    assert bad == "", f"kssm_core imported UI modules: {bad}"

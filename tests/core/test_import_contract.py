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


TORCH_FREE = r"""
import importlib, pkgutil, sys
import kssm_core.runbook, kssm_core.runfolder, kssm_core.autopilot
names = []
for pkg in (kssm_core.runbook, kssm_core.runfolder, kssm_core.autopilot):
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in sorted(names):
    importlib.import_module(name)
print(len(names))
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))
"""


def test_the_runbook_and_the_run_folder_never_import_torch():
    """kssm status, the autopilot and the cockpit judge runs without torch (a laptop over SSH can watch a GPU
    run); only checkpoint loading imports it, lazily."""
    r = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True, env=child_env(), cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    count, bad = r.stdout.splitlines()[0], (r.stdout.splitlines() + [""])[1]
    assert int(count) >= 15 and bad == "", f"torch imported by: {bad}"


# What the cockpit may use of kssm_core: the run model and the torch-free data pieces it draws, nothing that trains.
TUI_MAY_IMPORT = ("kssm_core.runbook", "kssm_core.runfolder", "kssm_core.reports.overlay", "kssm_core.config",
                  "kssm_core.autopilot.plan", "kssm_core.autopilot.state", "kssm_core.autopilot.lock")


def test_the_cockpit_imports_only_the_run_model():
    import ast
    from pathlib import Path

    offenders = []
    for path in sorted((Path(REPO) / "kssm_tui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names[:1] if isinstance(node, ast.ImportFrom) else names:
                if name.split(".")[0] in ("kssm_core", "torch") and name != "kssm_core" \
                        and not name.startswith(TUI_MAY_IMPORT):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
    assert offenders == []

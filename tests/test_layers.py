"""Layers point one way: the shared vocabulary (``octopus_crm.core``) at the bottom, adapters and
strategies on it, the daemon on top, the dev tools (``octopus_crm_sandbox``) above everything.

Every ``import`` statement of our packages is parsed (lazy ones inside functions too). The known
upward imports still being paid off are listed in ``DEBT``; a new one fails, and so does a debt
entry that no longer exists (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "octopus_crm": ROOT / "octopus_crm",
    "daemon": ROOT / "daemon",
    "adapters": ROOT / "adapters",
    "strategies": ROOT / "strategies",
    "octopus_crm_sandbox": ROOT / "sandbox" / "octopus_crm_sandbox",
}
# What each layer may import besides itself.
ALLOWED = {
    "octopus_crm": set(),
    "adapters": {"octopus_crm"},
    "strategies": {"octopus_crm"},
    "daemon": {"octopus_crm", "adapters", "strategies"},
    "octopus_crm_sandbox": {"octopus_crm", "adapters", "strategies", "daemon"},
}
# (importing module, imported module): upward imports not yet removed (issue 10, item 1).
DEBT = {
    # the CLI's demo, dev and sandbox commands load the optional dev-tools distribution lazily
    ("daemon.cli", "octopus_crm_sandbox.demo"),
    ("daemon.cli", "octopus_crm_sandbox.dev"),
    ("daemon.cli", "octopus_crm_sandbox.local_stack"),
    ("daemon.cli", "octopus_crm_sandbox.registry"),
    ("daemon.cli", "octopus_crm_sandbox.runner"),
}


def layer(module: str) -> str | None:
    top = module.split(".")[0]
    return top if top in FOLDERS else None


def imports() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            module = ".".join((package, *parts)).removesuffix(".__init__")
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                found.update((module, name) for name in names if layer(name) not in (None, package))
    return found


def test_no_upward_import_beyond_the_known_debt() -> None:
    upward = {(src, dst) for src, dst in imports() if layer(dst) not in ALLOWED[layer(src) or ""]}
    assert upward - DEBT == set(), "new imports against the layers"
    assert DEBT - upward == set(), "paid-off debt: remove it from DEBT"


def test_the_bottom_layer_imports_nothing_of_ours() -> None:
    assert not [edge for edge in imports() if layer(edge[0]) == "octopus_crm"]

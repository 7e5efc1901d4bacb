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
    "octopus_crm.core": ROOT / "octopus_crm" / "core",
    "octopus_crm.adapters": ROOT / "adapters",
    "octopus_crm.strategies": ROOT / "strategies",
    "octopus_crm.daemon": ROOT / "daemon",
    "octopus_crm_sandbox": ROOT / "sandbox" / "octopus_crm_sandbox",
}
# The folders' import names before they moved under octopus_crm (python-daemon's ``daemon``,
# AdapterHub's ``adapters``): nothing may import them any more.
RETIRED = ("daemon", "adapters", "strategies")
# What each layer may import besides itself.
CORE, ADAPTERS, STRATEGIES, DAEMON = (
    "octopus_crm.core",
    "octopus_crm.adapters",
    "octopus_crm.strategies",
    "octopus_crm.daemon",
)
ALLOWED = {
    CORE: set(),
    ADAPTERS: {CORE},
    STRATEGIES: {CORE},
    DAEMON: {CORE, ADAPTERS, STRATEGIES},
    "octopus_crm_sandbox": {CORE, ADAPTERS, STRATEGIES, DAEMON},
}
# (importing module, imported module): upward imports not yet removed (issue 10, item 1).
DEBT: set[tuple[str, str]] = set()  # the CLI finds the dev tools' commands through entry points


def layer(module: str) -> str | None:
    return next((name for name in FOLDERS if module == name or module.startswith(name + ".")), None)


def imports(*, retired: bool = False) -> set[tuple[str, str]]:
    """(importing module, imported module) across layers; ``retired``: imports of the old names."""
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
                if retired:
                    found.update((module, name) for name in names if name.split(".")[0] in RETIRED)
                else:
                    found.update((module, name) for name in names if layer(name) not in (None, package))
    return found


def test_no_upward_import_beyond_the_known_debt() -> None:
    upward = {(src, dst) for src, dst in imports() if layer(dst) not in ALLOWED[layer(src) or ""]}
    assert upward - DEBT == set(), "new imports against the layers"
    assert DEBT - upward == set(), "paid-off debt: remove it from DEBT"


def test_the_bottom_layer_imports_nothing_of_ours() -> None:
    assert not [edge for edge in imports() if layer(edge[0]) == CORE]


def test_nothing_imports_the_generic_top_level_names() -> None:
    """The wheel claims only ``octopus_crm``; the folders are its subpackages (symlinks in octopus_crm/)."""
    assert imports(retired=True) == set()

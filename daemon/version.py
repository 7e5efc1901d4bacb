"""The installed version of octopus-crm-sync (``octopus-crm --version``, ``octopus_crm_build_info``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["VERSION"]

try:
    VERSION = version("octopus-crm-sync")
except PackageNotFoundError:  # a source checkout that was never installed
    VERSION = "0+unknown"

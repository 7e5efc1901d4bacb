"""Configuration versions on disk: the file stays the source of truth, and the admin API writes it
the way a person with ``git`` would.

A new version is written atomically (a temp file in the same directory, fsync, ``rename``); the
previous file is kept under ``<dir>/.<name>.versions/`` (the last :data:`KEEP_VERSIONS`). Secrets
never enter the file: each credential value (and each secret header) goes to its own 0600 file in
``<dir>/<stem>.secrets/`` and the configuration refers to it as ``${file:/abs/path}``, which
:mod:`octopus_crm.daemon.config` resolves at load. A file that cannot be written (a Kubernetes ConfigMap
mount, a read-only volume) is refused with a reason: the change belongs in Git then.

The version is the first 12 hex digits of the SHA-256 of the file's bytes (and the overlay's).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from octopus_crm.daemon.config import SECRET_HEADER_NAMES, public_credential

__all__ = [
    "KEEP_VERSIONS",
    "MASK",
    "ConfigWriteRefused",
    "ConfigWriter",
    "merge_integration",
    "version_of",
]

KEEP_VERSIONS = 20
MASK = "***"
_REFERENCE = re.compile(r"^\$\{[^}]+\}$")


class ConfigWriteRefused(Exception):
    """The configuration file cannot be rewritten here; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def version_of(path: str | os.PathLike[str], overlay_path: str | os.PathLike[str] | None = None) -> str:
    """The version hash of the file (and overlay) as it is now; ``"unknown"`` if unreadable."""
    digest = hashlib.sha256()
    for part in (path, overlay_path):
        if part is None:
            continue
        try:
            digest.update(Path(part).read_bytes())
        except OSError:
            return "unknown"
    return digest.hexdigest()[:12]


def _is_secret(section: str, key: str) -> bool:
    if section == "credentials":
        return not public_credential(key)
    return bool(SECRET_HEADER_NAMES.search(key))


def merge_integration(existing: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``entry`` over the raw ``existing`` entry of the same id. Credentials are write-only: a
    secret sent as ``"***"`` or left out keeps its current (raw, possibly ``${…}``) value."""
    merged = copy.deepcopy(dict(entry))
    if existing is None:
        return merged
    old_config = existing.get("config")
    if not isinstance(old_config, dict):
        old_config = {}
    config = merged.setdefault("config", {})
    for section in ("credentials", "headers"):
        old = old_config.get(section)
        if not isinstance(old, dict):
            old = {}
        new = config.get(section)
        if not isinstance(new, dict):
            if old:
                config[section] = dict(old)
            continue
        for key, value in old.items():
            if _is_secret(section, key) and new.get(key) in (None, "", MASK):
                new[key] = value
    return merged


class ConfigWriter:
    """Writes new versions of one configuration file."""

    def __init__(self, path: str | os.PathLike[str], overlay_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).absolute()
        self.overlay_path = Path(overlay_path) if overlay_path else None
        self.versions_dir = self.path.parent / f".{self.path.name}.versions"
        self.secrets_dir = self.path.parent / f"{self.path.stem}.secrets"

    def version(self) -> str:
        return version_of(self.path, self.overlay_path)

    def refusal(self) -> str | None:
        """Why this file cannot be rewritten here, or ``None``."""
        directory = self.path.parent
        if (directory / "..data").is_symlink():
            return (
                f"{self.path} is mounted from a Kubernetes ConfigMap (read-only); change the configuration"
                " in Git and let the rollout apply it"
            )
        if self.path.suffix.lower() in (".yaml", ".yml"):
            return f"{self.path} is YAML; the admin API writes JSON files only (edit the YAML in Git)"
        if not os.access(directory, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            return f"{self.path} is on a read-only file system or not writable by this process; change it in Git"
        return None

    def split_secrets(self, entry: Mapping[str, Any]) -> tuple[dict[str, Any], dict[Path, str]]:
        """The entry with each literal secret replaced by a ``${file:…}`` reference, and the
        files to write. Values that already are references stay as they are."""
        out = copy.deepcopy(dict(entry))
        files: dict[Path, str] = {}
        config = out.get("config")
        if not isinstance(config, dict):
            return out, files
        for section in ("credentials", "headers"):
            values = config.get(section)
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                if not isinstance(value, str) or not _is_secret(section, key) or _REFERENCE.match(value.strip()):
                    continue
                # A new file per value: the versions kept still point at the secrets they were written with.
                stamp = f"{time.time_ns():x}"
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{out.get('id', 'integration')}.{section}.{key}.{stamp}")
                target = self.secrets_dir / name
                files[target] = value
                values[key] = f"${{file:{target}}}"
        return out, files

    def write(self, tree: Mapping[str, Any], secret_files: Mapping[Path, str]) -> str:
        """Write the secrets, keep the current version, swap the new file in; the new version."""
        refusal = self.refusal()
        if refusal is not None:
            raise ConfigWriteRefused(refusal)
        try:
            if secret_files:
                self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
                for target, value in secret_files.items():
                    _atomic_write(target, value.encode(), mode=0o600)
            if self.path.exists():
                self.versions_dir.mkdir(mode=0o700, exist_ok=True)
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                kept = self.versions_dir / f"{stamp}-{self.version()}{self.path.suffix}"
                _atomic_write(kept, self.path.read_bytes(), mode=0o600)
            _atomic_write(self.path, orjson.dumps(dict(tree), option=orjson.OPT_INDENT_2) + b"\n", mode=0o644)
            self._prune()
        except OSError as exc:
            raise ConfigWriteRefused(f"cannot write {self.path}: {exc.strerror}; change it in Git") from None
        return self.version()

    def _prune(self) -> None:
        """Keep the last versions, and the secret files the file or a kept version refers to."""
        versions = sorted(self.versions_dir.iterdir()) if self.versions_dir.is_dir() else []
        for old in versions[:-KEEP_VERSIONS]:
            with contextlib.suppress(OSError):
                old.unlink()
        if not self.secrets_dir.is_dir():
            return
        referenced = b"".join(p.read_bytes() for p in [self.path, *versions[-KEEP_VERSIONS:]] if p.is_file())
        for secret in self.secrets_dir.iterdir():
            if str(secret).encode() not in referenced:
                with contextlib.suppress(OSError):
                    secret.unlink()


def _atomic_write(target: Path, data: bytes, *, mode: int) -> None:
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise

"""Loopback helpers: a free port to listen on, the port a started aiohttp site got."""

from __future__ import annotations

import socket

from aiohttp import web

__all__ = ["bound_port", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bound_port(site: web.TCPSite) -> int:
    """The port of a started site that was asked for port 0."""
    server = site._server  # aiohttp keeps the asyncio server private
    sockets = getattr(server, "sockets", None)
    if not sockets:
        raise RuntimeError("site is not listening")
    return int(sockets[0].getsockname()[1])

"""Loaded by every Python process the tests start (notebook kernels included): refuse any
connection that leaves this machine, so a hidden download fails loudly."""

import ipaddress
import socket

_connect = socket.socket.connect


def _loopback(address) -> bool:
    if not isinstance(address, tuple):
        return True
    if address[0] == "localhost":
        return True
    try:
        return ipaddress.ip_address(address[0]).is_loopback
    except ValueError:
        return False


def _guarded(self, address):
    if not _loopback(address):
        raise ConnectionRefusedError(f"tests may not reach the network (tried {address!r})")
    return _connect(self, address)


socket.socket.connect = _guarded

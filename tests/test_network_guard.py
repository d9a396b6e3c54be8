import socket

import pytest


def test_non_loopback_connections_are_refused():
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="network"):
        s.connect(("93.184.216.34", 443))


def test_loopback_stays_usable():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.socket() as client:
            client.connect(server.getsockname())

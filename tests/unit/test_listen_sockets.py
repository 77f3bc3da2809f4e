"""supervisor/common/listen_sockets.py: the one set of binding rules (real sockets, no processes)."""

import os
import socket
import stat

import pytest

from supervisor.common.listen_sockets import ListenError, bind_tcp, bound_address, close_socket_file, unix_listener


def test_port_zero_resolves_and_a_taken_remembered_port_falls_back(caplog):
    first = bind_tcp("127.0.0.1:0", "127.0.0.1", 0)
    try:
        taken = first.getsockname()[1]
        second = bind_tcp("127.0.0.1:0", "127.0.0.1", 0, remembered_port=taken)
        try:
            assert second.getsockname()[1] != taken
            assert "the previous port %d is taken" % taken in caplog.text
            assert bound_address(second).startswith("127.0.0.1:")
        finally:
            second.close()
        with pytest.raises(ListenError, match=r"^heartbeat.http.listen 127.0.0.1:%d: " % taken):
            bind_tcp(f"127.0.0.1:{taken}", "127.0.0.1", taken)
    finally:
        first.close()


def test_a_stale_socket_file_is_replaced_and_closing_removes_it(tmp_path):
    path = tmp_path / "hb.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    sock = unix_listener(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    with pytest.raises(ListenError, match="is listening on it"):
        unix_listener(path)  # a live listener is never replaced
    close_socket_file(sock, path)
    assert not path.exists() and sock.fileno() == -1
    close_socket_file(sock, path)  # twice is harmless


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path):
    path = tmp_path / "hb.sock"
    path.write_text("keep\n")
    with pytest.raises(ListenError, match="exists and is not a socket; agentd does not remove it"):
        unix_listener(path)
    assert path.read_text() == "keep\n"

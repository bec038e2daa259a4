"""Helpers shared by tests that start servers (pytest puts this folder on sys.path)."""

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask_served_model(port: int, rows, server, seconds: int = 120):
    """POST rows to a starting `mlflow models serve` on 127.0.0.1:port until it answers;
    return the decoded answer. Fails at once with the server's stderr if it dies."""
    import json
    import time
    import urllib.request

    body = json.dumps({"inputs": rows.tolist()}).encode()
    for _ in range(seconds):
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, server.stderr.read()[-3000:]
            time.sleep(1)
    pytest.fail(f"the model server on port {port} did not answer within {seconds} s")

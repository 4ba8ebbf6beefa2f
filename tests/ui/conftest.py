"""A UI server on a free port over a fresh workspace, shared by the UI tests of one module."""

import json
import threading
import urllib.error
import urllib.request

import pytest

from trilora.config import UIConfig
from trilora.ui.server import make_server


class Client:
    def __init__(self, server):
        host, port = server.server_address[:2]
        self.base, self.token, self.root = f"http://{host}:{port}", server.token, server.workspace.root

    def request(self, path: str, body=None, token: str | None = "default"):
        headers = {} if token is None else {"X-Trilora-Token": self.token if token == "default" else token}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, headers=headers, method="POST" if body is not None else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, path: str, body=None, token="default"):
        status, content = self.request(path, body, token)
        return status, json.loads(content)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    server = make_server(UIConfig(root=str(tmp_path_factory.mktemp("ui") / "workspace"), port=0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(server)
    server.shutdown()
    server.server_close()

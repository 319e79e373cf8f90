"""Real `mamba-deploy serve` processes on the shipped demo model (exported here, onnxruntime on the CPU), on a
free loopback port (`--port 0`; the port is read from the server's first line), stopped after the module."""
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (fastapi, uvicorn) is not installed")

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "models" / "mamba-tiny-pydoc"
START_TIMEOUT_S = 90


class ServerProcess:
    """A `python -m mamba_deploy.cli serve ...` subprocess; `url` once it listens, `stop()` sends SIGTERM."""

    def __init__(self, args, tmp_path):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("MAMBA_DEPLOY_API_KEY", None)
        self.stderr_path = tmp_path / "stderr.txt"
        self.proc = subprocess.Popen([sys.executable, "-m", "mamba_deploy.cli", "serve", *map(str, args),
                                      "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=self.stderr_path.open("w"), text=True, env=env)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next_line(START_TIMEOUT_S)
        match = re.search(r"on (http://127\.0\.0\.1:\d+)$", first or "")
        if match is None:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {first!r}\n{self.stderr_path.read_text()[-3000:]}")
        self.url = match.group(1)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self, timeout=30):
        """SIGTERM, then the exit status (SIGKILL after `timeout` seconds: a server that does not drain)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory):
    """The demo model exported (float32, plugin ops): no chat template in its tokenizer_config.json."""
    from mamba_deploy.export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("serve") / "mamba-tiny-pydoc"
    export_model(str(DEMO), str(out), ExportOptions(), progress=False)
    return out


CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}"
                 "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="session")
def chat_export(demo_export, tmp_path_factory):
    """A copy of the demo export whose tokenizer_config.json has a small chat template."""
    import json

    out = tmp_path_factory.mktemp("serve-chat") / "mamba-tiny-chat"
    shutil.copytree(demo_export, out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """start_server(*args) -> a running ServerProcess; every one is stopped when the module ends."""
    started = []

    def start(*args):
        server = ServerProcess(args, tmp_path_factory.mktemp("server"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()

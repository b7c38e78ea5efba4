"""python -m edgecnn.cloud / edgecnn.edge as real processes: start, answer,
SIGTERM, clean exit."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from edgecnn import serving
from tests.conftest import fake_dataset
from tests.conftest import save_tiny_cloud

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait(url, proc, timeout=180):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise AssertionError(proc.stderr.read()[-3000:])
    try:
      if httpx.get(url + "/healthz", timeout=1).status_code == 200:
        return
    except httpx.HTTPError:
      pass
    time.sleep(0.3)
  raise AssertionError(f"{url} did not come up")


def test_cloud_and_edge_commands(tmp_path):
  ds = fake_dataset("fashion_mnist", n_train=40, n_test=4)
  save_tiny_cloud(tmp_path / "cloud")
  for i in range(20):
    d = tmp_path / "labelled" / str(int(ds.y_train[i]))
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{i}.png").write_bytes(serving.encode_png(ds.x_train[i]))
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  cport, eport = _port(), _port()
  cloud = subprocess.Popen(
      [sys.executable, "-m", "edgecnn.cloud", f"--cloud_dir={tmp_path / 'cloud'}",
       f"--workdir={tmp_path / 'cs'}", f"--port={cport}", "--token=t0k"],
      env=env, stderr=subprocess.PIPE, text=True)
  edge = None
  try:
    _wait(f"http://127.0.0.1:{cport}", cloud)
    edge = subprocess.Popen(
        [sys.executable, "-m", "edgecnn.edge", "--edge_id=edge-cli",
         f"--cloud_url=http://127.0.0.1:{cport}", "--cloud_token=t0k",
         f"--labelled_dir={tmp_path / 'labelled'}", f"--workdir={tmp_path / 'e'}",
         f"--port={eport}", "--max_epochs=1"],
        env=env, stderr=subprocess.PIPE, text=True)
    _wait(f"http://127.0.0.1:{eport}", edge)
    r = httpx.post(f"http://127.0.0.1:{eport}/v1/classify",
                   content=serving.encode_png(ds.x_test[0]),
                   headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["model_version"] == 1
    token_file = tmp_path / "e" / "token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    r = httpx.post(f"http://127.0.0.1:{eport}/v1/admin/upload", headers={
        "Authorization": f"Bearer {token_file.read_text().strip()}"})
    assert r.status_code == 200 and r.json()["sent"] == 1
  finally:
    for proc in (edge, cloud):
      if proc is not None:
        proc.send_signal(signal.SIGTERM)
  assert edge.wait(timeout=60) == 0
  edge_log = edge.stderr.read()
  assert "stopped cleanly" in edge_log
  assert "t0k" not in edge_log  # tokens are never logged
  assert cloud.wait(timeout=60) == 0

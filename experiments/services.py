"""Starting the cloud and edge services as processes for the experiments,
waiting until they answer, and stopping them."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(prefix, module, *args, log):
  """``[prefix] python -m module args`` with this checkout on PYTHONPATH,
  output to the open file ``log``."""
  root = pathlib.Path(__file__).resolve().parent.parent
  env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.Popen([*prefix, sys.executable, "-m", module, *args],
                          env=env, stdout=log, stderr=subprocess.STDOUT)


HEALTH_SCRIPT = """
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=2)
c.request("GET", "/healthz")
sys.exit(0 if json.loads(c.getresponse().read()).get("status") == "ok" else 1)
"""


def wait_healthy(procs, targets, prefix, log_path, timeout=900):
  """Waits until every (host, port) answers /healthz, checked from inside
  ``prefix`` (a network namespace, or [] for this one); fails at once, with
  the services' log, if a service process died."""
  deadline = time.monotonic() + timeout
  pending = list(targets)
  while pending:
    for p in procs:
      if p.poll() is not None:
        raise RuntimeError(f"a service exited with {p.returncode}:\n"
                           f"{pathlib.Path(log_path).read_text()[-3000:]}")
    host, port = pending[0]
    ok = subprocess.run([*prefix, sys.executable, "-c", HEALTH_SCRIPT, host,
                         str(port)], capture_output=True).returncode == 0
    if ok:
      pending.pop(0)
    elif time.monotonic() > deadline:
      raise TimeoutError(f"{host}:{port} did not become healthy")
    else:
      time.sleep(1)


def stop(procs, timeout: float = 30) -> None:
  """SIGTERM every process (they shut down cleanly), SIGKILL stragglers."""
  for p in procs:
    p.terminate()
  for p in procs:
    try:
      p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      p.kill()

"""Response-time study (Sec. 4.2, Figs. 4-6): a phone sends images to the edge
(EdgeCNN1-3) or to the cloud (CloudCNN) over emulated LTE or WiFi links.

Per request the phone records (all times from one monotonic clock shared by
every process and network namespace on the machine):
  * response time: first request byte sent -> whole answer received;
  * upload time: first byte sent -> the server has read the whole body;
  * inference time: the model's forward pass on the server;
  * server time: decode, pre-process and inference on the server;
  * download time: the server sends the answer -> the phone has it.

Links (defaults; every value is a flag of experiments/response_time.py):
  * phone <-> edge, one hop (Sec. 4.2.1): LTE 1,000 KB/s up and 1.36 MB/s
    down; WiFi 9 MB/s both ways; 5 ms one-way delay (the base station is next
    to the edge server).
  * phone -> cloud: the same radio link in series with a core-network path:
    30 ms one-way delay (commercial LTE round trips to cloud servers are
    commonly above 50 ms: Braud et al., "Multi-carrier measurement study of
    mobile network latency", 2017; Smith et al., CMU-CS-22-115, 2022) and
    450 KB/s, the throughput implied by the paper's own figure (uploading
    512 KB to the edge at 1,000 KB/s takes 0.51 s and is 55.42% faster than
    to the cloud, i.e. about 1.15 s, about 450 KB/s).
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import logging
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

from edgecnn import netem

logger = logging.getLogger("edgecnn.response_time")
KB = netem.KB


@dataclasses.dataclass(frozen=True)
class Links:
  edge: netem.LinkSpec
  cloud: netem.LinkSpec


def make_links(link: str, *, edge_delay_s: float = 0.005,
               core_delay_s: float = 0.03,
               core_bytes_per_s: float = 450 * KB,
               lte_up: float = 1000 * KB, lte_down: float = 1360 * KB,
               wifi: float = 9000 * KB) -> Links:
  """Phone->edge and phone->cloud links of Sec. 4.2.1 (see module doc)."""
  if link == "lte":
    radio = netem.LinkSpec(lte_up, lte_down, edge_delay_s)
  elif link == "wifi":
    radio = netem.LinkSpec(wifi, wifi, edge_delay_s)
  else:
    raise ValueError(f"`link` must be 'lte' or 'wifi'. Received: link={link!r}")
  core = netem.LinkSpec(core_bytes_per_s, core_bytes_per_s, core_delay_s)
  return Links(edge=radio, cloud=netem.series(radio, core))


def make_image(num_bytes: int, *, channels: int = 3, fmt: str = "png",
               seed: int = 0) -> bytes:
  """An image file of about ``num_bytes`` (noise does not compress, so the
  file size follows the pixel count)."""
  from PIL import Image
  if fmt not in ("png", "jpeg"):
    raise ValueError(f"`fmt` must be 'png' or 'jpeg'. Received: fmt={fmt!r}")
  rng = np.random.default_rng(seed)
  per_pixel = channels if fmt == "png" else channels * 0.8
  side = max(8, int(math.sqrt(num_bytes / per_pixel)))
  best = None
  for _ in range(6):  # adjust the side until the size is within 3%
    pixels = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG",
             **({"quality": 95} if fmt == "jpeg" else {}))
    best = buf.getvalue()
    ratio = num_bytes / len(best)
    if abs(ratio - 1) < 0.03:
      break
    side = max(8, int(side * math.sqrt(ratio)))
  return best


def measure(host: str, port: int, path: str, body: bytes, content_type: str,
            token: str | None = None) -> dict:
  """One request from the phone; returns the five times in seconds."""
  conn = http.client.HTTPConnection(host, port, timeout=300)
  conn.connect()  # connection set-up is not part of the response time
  headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
  if token:
    headers["Authorization"] = f"Bearer {token}"
  try:
    start = time.monotonic()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    end = time.monotonic()
  finally:
    conn.close()
  if response.status != 200:
    raise RuntimeError(f"{path} answered {response.status}: {payload[:300]!r}")
  received = float(response.getheader("X-Body-Received-At"))
  sent = float(response.getheader("X-Sent-At"))
  return {"response_time": end - start, "upload_time": received - start,
          "inference_time": float(response.getheader("X-Inference-Ms")) / 1000,
          "server_time": float(response.getheader("X-Server-Ms")) / 1000,
          "download_time": end - sent, "answer": json.loads(payload)["class"]}


def run_phone(targets: dict[str, dict], sizes_kb, repeats: int, *, fmt: str,
              channels: int, warmup: int = 1) -> list[dict]:
  """The phone's loop: for each size, each target (interleaved), repeats.

  Args:
    targets: name -> {"host", "port", "path", "token"}.
    sizes_kb: image sizes in KB.
    repeats: timed requests per (size, target).
    fmt, channels: image format and colour channels of the uploads.
    warmup: untimed requests per target first.
  """
  samples = []
  images = {kb: make_image(int(kb * KB), channels=channels, fmt=fmt, seed=i)
            for i, kb in enumerate(sizes_kb)}
  ctype = "image/png" if fmt == "png" else "image/jpeg"
  for name, t in targets.items():
    for _ in range(warmup):
      measure(t["host"], t["port"], t["path"], images[sizes_kb[0]], ctype,
              t.get("token"))
  for kb in sizes_kb:
    for r in range(repeats):
      for name, t in targets.items():
        m = measure(t["host"], t["port"], t["path"], images[kb], ctype,
                    t.get("token"))
        samples.append({"target": name, "size_kb": kb,
                        "bytes": len(images[kb]), "repeat": r, **m})
  return samples


def summarise(samples: list[dict]) -> list[dict]:
  """Median and half-range per (target, size, metric)."""
  out = []
  keys = sorted({(s["target"], s["size_kb"]) for s in samples})
  for target, kb in keys:
    group = [s for s in samples if s["target"] == target and s["size_kb"] == kb]
    for metric in ("response_time", "upload_time", "inference_time",
                   "server_time", "download_time"):
      values = [g[metric] for g in group]
      out.append({"target": target, "size_kb": kb, "metric": metric,
                  "median": statistics.median(values),
                  "spread": (max(values) - min(values)) / 2,
                  "n": len(values), "bytes": group[0]["bytes"]})
  return out


def wait_healthy(host: str, port: int, timeout: float = 600) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      conn = http.client.HTTPConnection(host, port, timeout=2)
      conn.request("GET", "/healthz")
      response = conn.getresponse()
      body = json.loads(response.read() or b"{}")
      conn.close()
      if response.status == 200 and body.get("status") == "ok":
        return
    except (OSError, http.client.HTTPException, ValueError):
      pass
    time.sleep(0.5)
  raise TimeoutError(f"http://{host}:{port} did not become healthy")


PHONE_SCRIPT = """
import json, sys
from edgecnn import response_time as rt
spec = json.loads(sys.argv[1])
samples = rt.run_phone(spec["targets"], spec["sizes_kb"], spec["repeats"],
                       fmt=spec["fmt"], channels=spec["channels"])
print(json.dumps(samples))
"""


def run_in_namespace(prefix: list[str], spec: dict) -> list[dict]:
  """Runs the phone loop in a network namespace (a child process)."""
  root = pathlib.Path(__file__).resolve().parent.parent
  env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run([*prefix, sys.executable, "-c", PHONE_SCRIPT,
                         json.dumps(spec)], env=env, capture_output=True,
                        text=True)
  if proc.returncode:
    raise RuntimeError(f"phone loop failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])

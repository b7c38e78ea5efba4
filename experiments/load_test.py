r"""Bounded load on an edge's predict endpoint, on loopback.

Starts the cloud and an edge (EdgeCNN1-m) as processes, then for each
concurrency in --concurrency keeps that many requests in flight for
--seconds and records throughput and p50/p99 latency; measures, in the same
run, the model's own batched `predict` throughput (a separate process
loading the edge's served weights); optionally forces --hot_swaps retrains
while a load runs and counts failed requests; samples the edge's resident
memory. Rows go to results/load_test.csv.

  python -m experiments.load_test --cloud_dir=workdir/cloud/... \
      --concurrency=1,4,16,64 --seconds=10
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pathlib
import secrets
import statistics
import subprocess
import sys
import time
import urllib.parse

from absl import app
from absl import flags
import numpy as np

from experiments import cli
from experiments import common
from experiments import services

# The library loads on first use, so --help needs no TensorFlow.
cloud_model = cli.lazy_import("edgecnn.cloud_model")
models = cli.lazy_import("edgecnn.models")

# --help lists these shared flags too (common.FLAG_GROUPS).
common.declare_key_flags("dataset", "data_dir", "cloud", "results")

CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "2", "4", "8", "16", "32",
                                                "64"], "Requests in flight.")
SECONDS = flags.DEFINE_float("seconds", 10.0, "Duration of each level.")
NUM_SHARED = flags.DEFINE_integer("num_shared", 3, "m of the edge.")
INSTANCES = flags.DEFINE_integer("instances", 1, "Instances per request.")
MAX_BATCH = flags.DEFINE_integer("max_batch", 64, "Edge's dynamic batching.")
MAX_WAIT = flags.DEFINE_float("max_batch_wait_ms", 2.0, "Edge's batch wait.")
NUM_LABELLED = flags.DEFINE_integer("num_labelled", 120,
                                    "Labelled images of the edge's Alg. 1.")
BODY = flags.DEFINE_enum(
    "body", "json", ["json", "npy"], "Predict body: TF Serving's JSON "
    "(nested lists) or the edge's binary .npy extension.")
CLIENT = flags.DEFINE_enum(
    "client", "raw", ["raw", "httpx"], "Load generator's HTTP client: raw "
    "keep-alive HTTP/1.1 sockets (little CPU of its own, so the edge gets the "
    "cores) or httpx.")
FAST_PREDICT = flags.DEFINE_bool(
    "fast_predict", True, "The edge's pure-ASGI predict fast path "
    "(edgecnn.edge --fast_predict); rows carry fast_path=on|off.")
HOT_SWAPS = flags.DEFINE_integer(
    "hot_swaps", 0, "Retrains forced (and deployed if not worse) during an "
    "extra load run at the highest concurrency.")


def _rss_mb(pid: int) -> float:
  for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


class _RawConnection:
  """One keep-alive HTTP/1.1 connection that posts a fixed JSON body.

  The generator shares the machine's cores with the edge it measures; httpx
  spends about a millisecond of CPU per request, this a few tens of
  microseconds, so the numbers describe the server rather than the client.
  """

  def __init__(self, url: str, body: bytes, content_type: str):
    parts = urllib.parse.urlsplit(url)
    self.host, self.port = parts.hostname, parts.port
    self.request = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: "
                    f"{len(body)}\r\n\r\n").encode() + body
    self.reader = self.writer = None

  async def post(self) -> int:
    """Sends the request; returns the status (reconnects after an error)."""
    if self.writer is None:
      self.reader, self.writer = await asyncio.open_connection(self.host,
                                                               self.port)
    try:
      self.writer.write(self.request)
      head = await self.reader.readuntil(b"\r\n\r\n")
      length = None
      for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
          length = int(value)
      if length is None:
        raise ConnectionError("response without Content-Length")
      await self.reader.readexactly(length)
      return int(head[9:12])
    except (OSError, asyncio.IncompleteReadError, ValueError):
      self.close()
      raise ConnectionError("connection failed")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    self.reader = self.writer = None


def _content_type() -> str:
  return "application/x-npy" if BODY.value == "npy" else "application/json"


async def _posters(url: str, body: bytes, n: int):
  """n async callables that post ``body`` and return the status, and a
  cleanup coroutine; --client chooses raw keep-alive sockets or httpx."""
  if CLIENT.value == "raw":
    conns = [_RawConnection(url, body, _content_type()) for _ in range(n)]

    async def close():
      for c in conns:
        c.close()
    return [c.post for c in conns], close
  import httpx
  client = httpx.AsyncClient(limits=httpx.Limits(
      max_connections=n, max_keepalive_connections=n), timeout=60)

  async def post():
    try:
      r = await client.post(url, content=body,
                            headers={"Content-Type": _content_type()})
    except httpx.HTTPError as e:
      raise ConnectionError(str(e)) from e
    return r.status_code
  return [post] * n, client.aclose


async def _load(url: str, body: bytes, concurrency: int, seconds: float):
  latencies, failures = [], 0
  stop = time.monotonic() + seconds
  posts, close = await _posters(url, body, concurrency)

  async def worker(post):
    nonlocal failures
    while time.monotonic() < stop:
      start = time.perf_counter()
      try:
        ok = await post() == 200
      except ConnectionError:
        ok = False
      if ok:
        latencies.append(time.perf_counter() - start)
      else:
        failures += 1
  begin = time.perf_counter()
  await asyncio.gather(*[worker(post) for post in posts])
  elapsed = time.perf_counter() - begin
  await close()
  return latencies, failures, elapsed


MODEL_SCRIPT = """
import sys, time, json, numpy as np
from edgecnn import models
payload = open(sys.argv[1], "rb").read()
m = models.build_edge_cnn_from_payload(payload)
m.load_weights(sys.argv[2])
x = np.random.default_rng(0).random((int(sys.argv[3]), *m.input_shape[1:]),
                                    dtype=np.float32)
m.predict(x, batch_size=64, verbose=0)
times = []
for _ in range(5):
  t = time.perf_counter(); m.predict(x, batch_size=64, verbose=0)
  times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)[2]))
"""


def main(argv):
  common.reject_args(argv)
  common.setup_logging()
  dataset_name = common.DATASET.value
  cloud_dir = common.cloud_directory(dataset_name)
  if not cloud_model.is_trained(cloud_dir):
    raise app.UsageError(f"No trained CloudCNN in {cloud_dir}.")
  work = pathlib.Path(common.WORKDIR.value) / "load_test"
  work.mkdir(parents=True, exist_ok=True)
  root = pathlib.Path(__file__).resolve().parent.parent
  env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
  token = secrets.token_urlsafe(12)
  cport, eport = services.free_port(), services.free_port()
  log_file = open(work / "services.log", "a")
  procs = [services.start(
      [], "edgecnn.cloud", f"--cloud_dir={cloud_dir}",
      f"--workdir={work / 'cloud'}", f"--port={cport}", f"--token={token}",
      log=log_file)]
  procs.append(services.start(
      [], "edgecnn.edge", "--edge_id=load",
      f"--cloud_url=http://127.0.0.1:{cport}", f"--cloud_token={token}",
      f"--num_shared={NUM_SHARED.value}", f"--dataset={dataset_name}",
      f"--num_labelled={NUM_LABELLED.value}",
      *([f"--data_dir={common.DATA_DIR.value}"] if common.DATA_DIR.value else []),
      f"--workdir={work / 'edge'}", "--max_epochs=3", f"--port={eport}",
      f"--max_batch={MAX_BATCH.value}",
      f"--max_batch_wait_ms={MAX_WAIT.value}", "--admin_token=adm",
      "--retrain_threshold=1000000", "--gate_tolerance=1.0",
      f"--{'' if FAST_PREDICT.value else 'no'}fast_predict", log=log_file))
  import httpx
  base = f"http://127.0.0.1:{eport}"
  try:
    services.wait_healthy(procs, [("127.0.0.1", cport), ("127.0.0.1", eport)],
                          [], work / "services.log")
    status = httpx.get(base + "/v1/status").json()
    payload = work / "edge" / "shared_layers.bin"
    weights = work / "edge" / "versions" / f"{status['serving_version']}.weights.h5"
    # Read in this process: it already imports Keras (a child would cost a
    # second TensorFlow start-up, about 8 s).
    shape = models.read_payload(payload.read_bytes())[0]["input_shape"]
    x = np.random.default_rng(0).random((INSTANCES.value, *shape)).round(4)
    if BODY.value == "npy":
      buf = io.BytesIO()
      np.save(buf, x.astype(np.float32), allow_pickle=False)
      body = buf.getvalue()
    else:
      body = json.dumps({"instances": x.tolist()}).encode()
    url = base + "/v1/models/edgecnn:predict"
    log = common.result_log("load_test")
    common.save_flags(log, f"{dataset_name}-m{NUM_SHARED.value}")
    key = {"dataset": dataset_name, "model": f"EdgeCNN1-{NUM_SHARED.value}",
           "num_shared": NUM_SHARED.value, "pretrained": True, "labels": "",
           "num_images": INSTANCES.value, **common.cloud_row_key(cloud_dir)}
    pid = procs[1].pid
    rss = [_rss_mb(pid)]
    own = float(subprocess.run(
        [sys.executable, "-c", MODEL_SCRIPT, str(payload), str(weights), "1024"],
        env=env, capture_output=True, text=True, check=True).stdout) / 1024
    own_rate = 1 / own
    log.append({**key, "condition": "model_predict;batch=64"},
               [("images_per_s", own_rate, "images/s")])
    logging.info("model's own batched predict: %.0f images/s", own_rate)
    for level in [int(c) for c in CONCURRENCY.value]:
      lat, failures, elapsed = asyncio.run(_load(url, body, level, SECONDS.value))
      rss.append(_rss_mb(pid))
      rate = len(lat) * INSTANCES.value / elapsed
      lat_ms = sorted(1000 * v for v in lat)
      p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))] if lat_ms else float("nan")
      cond = f"http;client={CLIENT.value};body={BODY.value};" \
             f"concurrency={level};" \
             f"max_batch={MAX_BATCH.value};" \
             f"wait_ms={MAX_WAIT.value:g};" \
             f"fast_path={'on' if FAST_PREDICT.value else 'off'}"
      log.append({**key, "condition": cond}, [
          ("images_per_s", rate, "images/s"),
          ("fraction_of_model_throughput", rate / own_rate, "fraction"),
          ("latency_p50", statistics.median(lat_ms) if lat_ms else float("nan"), "ms"),
          ("latency_p99", p99, "ms"), ("failed_requests", failures, "count"),
          ("edge_rss", rss[-1], "MB")])
      logging.info("concurrency %d: %.0f images/s (%.0f%% of the model's own), "
                   "p50 %.1f ms, p99 %.1f ms, %d failed, RSS %.0f MB", level,
                   rate, 100 * rate / own_rate,
                   statistics.median(lat_ms) if lat_ms else float("nan"), p99,
                   failures, rss[-1])
    if HOT_SWAPS.value:
      level = max(int(c) for c in CONCURRENCY.value)
      deployed, failures, swap_rss = asyncio.run(_swaps(
          url, base, body, level, HOT_SWAPS.value, pid))
      rss.extend(swap_rss)
      log.append({**key, "condition": f"http;hot_swaps;concurrency={level}"},
                 [("retrains_deployed", deployed, "count"),
                  ("failed_requests", failures, "count")] +
                 [(f"edge_rss_after_swap_{k + 1}", v, "MB")
                  for k, v in enumerate(swap_rss)])
      logging.info("%d hot swaps deployed under load: %d failed requests",
                   deployed, failures)
    log.append({**key, "condition": "memory"},
               [("edge_rss_first", rss[0], "MB"), ("edge_rss_last", rss[-1], "MB"),
                ("edge_rss_max", max(rss), "MB")])
  finally:
    services.stop(procs)
    log_file.close()


async def _swaps(url, base, body, level, swaps, pid):
  """Forces ``swaps`` retrains while ``level`` requests stay in flight;
  returns the deployed count, failed requests and the edge's RSS after each
  retrain."""
  import httpx
  done = asyncio.Event()
  failures = 0
  posts, close = await _posters(url, body, level)

  async def worker(post):
    nonlocal failures
    while not done.is_set():
      try:
        failures += await post() != 200
      except ConnectionError:
        failures += 1

  async with httpx.AsyncClient(timeout=900) as admin:
    workers = [asyncio.create_task(worker(post)) for post in posts]
    deployed, rss = 0, []
    for k in range(swaps):
      r = await admin.post(base + "/v1/admin/retrain",
                           headers={"Authorization": "Bearer adm"})
      deployed += r.json().get("status") == "deployed"
      rss.append(_rss_mb(pid))
      logging.info("hot swap %d: %s, edge RSS %.0f MB", k + 1,
                   r.json().get("status"), rss[-1])
    done.set()
    await asyncio.gather(*workers)
  await close()
  return deployed, failures, rss


if __name__ == "__main__":
  cli.run(main)

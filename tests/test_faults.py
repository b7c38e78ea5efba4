"""Faults: a killed edge, a cloud that is down, slow or lying, a retrain that
raises, a full store, and hot swaps in a row."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from edgecnn import client as client_lib
from edgecnn import data as data_lib
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.cloud import service as cloud_service
from edgecnn.edge import policy as policy_lib
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import service as edge_service
from tests.conftest import fake_dataset
from tests.conftest import save_tiny_cloud
from tests.conftest import scripted_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = train_lib.get_config("paper", max_epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  ds = fake_dataset("fashion_mnist", n_train=60, n_test=4)
  save_tiny_cloud(root / "cloud")
  runtime = cloud_service.CloudRuntime(root / "cloud", root / "cs", token="tok")
  return root, runtime, ds


def _labelled(ds):
  return runtime_lib.LabelledData(ds.x_train[:30], ds.y_train[:30],
                                  data_lib.subset_split(30, None, seed=0),
                                  ds.info, "fake")


def _edge(tmp_path, ds, cloud_client, **config):
  cfg = runtime_lib.EdgeConfig(edge_id="f", workdir=tmp_path / "edge",
                               train_config=QUICK, upload_batch=4,
                               max_backoff_s=0.5, **config)
  edge = runtime_lib.EdgeRuntime(cfg, _labelled(ds), cloud_client,
                                 policy=policy_lib.AlwaysPolicy(),
                                 admin_token="adm")
  edge.start()
  return edge


def test_edge_killed_mid_stream_keeps_every_answered_upload_once(tmp_path, cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  labelled = tmp_path / "labelled"
  for i in range(20):
    d = labelled / str(int(ds.y_train[i]))
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{i}.png").write_bytes(serving.encode_png(ds.x_train[i]))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
  cmd = [sys.executable, "-m", "edgecnn.edge", "--edge_id=k",
         f"--cloud_url={server.url}", "--cloud_token=tok",
         f"--labelled_dir={labelled}", f"--workdir={tmp_path / 'e'}",
         f"--port={port}", "--max_epochs=1", "--quiet_bytes_per_s=0"]
  url = f"http://127.0.0.1:{port}"

  def start():
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
      try:
        if httpx.get(url + "/healthz", timeout=1).json()["status"] == "ok":
          return proc
      except (httpx.HTTPError, ValueError):
        time.sleep(0.2)
    raise AssertionError("edge did not start")

  proc = start()
  answered, stop = [], threading.Event()

  def stream():
    i = 0
    while not stop.is_set():
      try:
        r = httpx.post(url + "/v1/classify", timeout=5,
                       content=serving.encode_png(ds.x_test[i % 4]),
                       headers={"Content-Type": "image/png"})
        if r.status_code == 200:
          answered.append(r.json()["object_id"])
      except httpx.HTTPError:
        pass
      i += 1

  thread = threading.Thread(target=stream)
  thread.start()
  while len(answered) < 15:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  stop.set()
  thread.join()
  db = sqlite3.connect(tmp_path / "e" / "store.sqlite")
  ids = [r[0] for r in db.execute("SELECT id FROM objects")]
  db.close()
  assert set(answered) <= set(ids)
  assert len(ids) == len(set(ids))
  proc = start()  # restarts from disk and keeps serving and counting
  try:
    status = httpx.get(url + "/v1/status").json()
    assert status["serving_version"] == 1
    assert sum(status["objects"].values()) == len(ids)
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    server.stop()


class FlakyCloud:
  """A cloud client that is down, then up; counts label calls."""

  def __init__(self, inner):
    self.inner, self.down, self.calls = inner, True, 0

  def shared_layers(self, m, edge):
    return self.inner.shared_layers(m, edge)

  def label(self, edge, objects):
    self.calls += 1
    if self.down:
      raise httpx.ConnectError("cloud unreachable")
    return self.inner.label(edge, objects)


def test_cloud_down_then_back_labels_arrive_once(tmp_path, cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  flaky = FlakyCloud(client_lib.CloudClient(server.url, "tok"))
  edge = _edge(tmp_path, ds, flaky)
  try:
    ids = [edge.classify_upload(serving.encode_png(ds.x_test[i]))["object_id"]
           for i in range(4)]
    assert "ConnectError" in edge.upload_once()["reason"]
    assert edge.store.counts()["pending"] == 4  # kept, not lost
    assert edge.status()["last_upload_error"].startswith("ConnectError")
    assert edge._backoff == 0.5 and edge._next_upload > time.monotonic()
    edge.tick()  # within the backoff window: no new attempt
    assert flaky.calls == 1
    # The edge keeps serving while the cloud is away.
    assert edge.classify_upload(serving.encode_png(ds.x_test[0]))["model_version"] == 1
    flaky.down = False
    edge._next_upload = 0
    edge.upload_once()
    edge.upload_once()
    counts = edge.store.counts()
    assert counts["labelled"] == 5 and counts["pending"] == 0
    labels = {i: edge.store.object_state(i)["label"] for i in ids}
    # Labels arrive once: a repeat of the same answer is refused.
    with pytest.raises(ValueError, match="not sent"):
      edge.store.set_labels({ids[0]: labels[ids[0]]}, 10)
    assert edge.status()["last_upload_error"] is None
  finally:
    edge.stop()
    server.stop()


class SlowCloud(FlakyCloud):
  def label(self, edge, objects):
    self.calls += 1
    if self.calls == 1:
      self.inner.label(edge, objects)  # the cloud did the work ...
      raise httpx.ReadTimeout("too slow")  # ... but the answer was lost
    return self.inner.label(edge, objects)


def test_slow_cloud_retry_is_idempotent(tmp_path, cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  slow = SlowCloud(client_lib.CloudClient(server.url, "tok"))
  edge = _edge(tmp_path, ds, slow)
  try:
    edge.classify_upload(serving.encode_png(ds.x_test[1]))
    before = runtime.stats["label_cache_hits"]
    assert edge.upload_once()["sent"] == 0
    assert edge.upload_once(force=True)["sent"] == 1
    assert runtime.stats["label_cache_hits"] == before + 1
    assert edge.store.counts()["labelled"] == 1
  finally:
    edge.stop()
    server.stop()


class LyingCloud(FlakyCloud):
  def __init__(self, inner, answer):
    super().__init__(inner)
    self.answer = answer

  def label(self, edge, objects):
    return self.answer([i for i, _ in objects]), 100


@pytest.mark.parametrize("answer", [
    lambda ids: [{"id": "f" * 32, "label": 1}],                      # wrong ids
    lambda ids: [{"id": i, "label": 99} for i in ids],               # bad class
    lambda ids: [{"id": i} for i in ids],                             # no label
    lambda ids: "garbage",                                            # not a list
    lambda ids: [{"id": i, "label": "cat"} for i in ids],            # wrong type
], ids=["wrong ids", "out of range", "missing label", "not a list", "string label"])
def test_garbage_from_the_cloud_is_rejected_and_nothing_stored(tmp_path, cloud,
                                                               answer):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  liar = LyingCloud(client_lib.CloudClient(server.url, "tok"), answer)
  edge = _edge(tmp_path, ds, liar)
  try:
    edge.classify_upload(serving.encode_png(ds.x_test[2]))
    edge.classify_upload(serving.encode_png(ds.x_test[3]))
    assert edge.upload_once()["sent"] == 0
    counts = edge.store.counts()
    assert counts["pending"] == 2 and counts["labelled"] == 0
    assert edge.status()["last_upload_error"]
  finally:
    edge.stop()
    server.stop()


def test_retrain_that_raises_keeps_old_version_and_reports(tmp_path, cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()

  calls = []

  def trainer(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
      raise MemoryError("out of memory while retraining")
    return train_lib.train_and_evaluate(*args, **kwargs)

  cfg = runtime_lib.EdgeConfig(edge_id="r", workdir=tmp_path / "edge",
                               train_config=QUICK)
  edge = runtime_lib.EdgeRuntime(cfg, _labelled(ds),
                                 client_lib.CloudClient(server.url, "tok"),
                                 policy=policy_lib.AlwaysPolicy(),
                                 trainer=trainer)
  edge.start()
  try:
    edge.classify_upload(serving.encode_png(ds.x_test[0]))
    edge.upload_once()
    out = edge.retrain()
    assert out["status"] == "failed" and "MemoryError" in out["error"]
    status = edge.status()
    assert status["serving_version"] == 1
    assert "out of memory" in status["last_error"]
    assert edge.classify_upload(serving.encode_png(ds.x_test[1]))["model_version"] == 1
  finally:
    edge.stop()
    server.stop()


def test_storage_quota_refuses_uploads_predict_goes_on_compaction_frees(tmp_path,
                                                                        cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  edge = _edge(tmp_path, ds, client_lib.CloudClient(server.url, "tok"),
               max_objects=3)
  http = serving.BackgroundServer(edge_service.create_app(edge)).start()
  try:
    c = client_lib.EdgeClient(http.url, "adm")
    for i in range(3):
      c.classify(serving.encode_png(ds.x_test[i]))
    with pytest.raises(client_lib.ServiceError) as e:
      c.classify(serving.encode_png(ds.x_test[3]))
    assert e.value.status == 507 and "quota of 3" in e.value.message
    assert c.predict("edgecnn", np.zeros((1, 24, 24, 1))).shape == (1, 10)
    assert c.predict_images("edgecnn", [serving.encode_png(ds.x_test[0])]).shape \
        == (1, 10)
    assert c.status()["stored_objects"] == 3
    c.force_upload()
    assert c.force_retrain()["status"] in ("deployed", "rejected")
    if edge.store.counts()["used"] == 0:  # a rejected retrain uses nothing
      edge.store.mark_used(edge.store.labelled()[0], 1)
    deleted = c.http.post("/v1/admin/compact").json()["deleted"]
    assert deleted == 3 and c.status()["stored_objects"] == 0
    assert c.classify(serving.encode_png(ds.x_test[3]))["object_id"]
  finally:
    http.stop()
    edge.stop()
    server.stop()


def test_five_hot_swaps_in_a_row_all_take_effect(tmp_path, cloud):
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  trainer = scripted_trainer([0.5, 0.6, 0.7, 0.8, 0.9, 0.95])

  cfg = runtime_lib.EdgeConfig(edge_id="s", workdir=tmp_path / "edge",
                               train_config=QUICK)
  edge = runtime_lib.EdgeRuntime(cfg, _labelled(ds),
                                 client_lib.CloudClient(server.url, "tok"),
                                 policy=policy_lib.AlwaysPolicy(), trainer=trainer,
                                 validator=trainer.validator)
  edge.start()
  http = serving.BackgroundServer(edge_service.create_app(edge)).start()
  try:
    c = client_lib.EdgeClient(http.url)
    for k in range(2, 7):
      c.classify(serving.encode_png(ds.x_test[k % 4]))
      edge.upload_once()
      assert edge.retrain()["status"] == "deployed"
      assert c.model_status("edgecnn")["model_version_status"][0]["version"] == str(k)
      assert c.classify(serving.encode_png(ds.x_test[0]))["model_version"] == k
    assert [v["version"] for v in c.status()["versions"]] == [1, 2, 3, 4, 5, 6]
  finally:
    http.stop()
    edge.stop()
    server.stop()


def test_isolated_training_deploys_and_reports_a_crashed_child(tmp_path, cloud):
  """Retraining in a child process (the edge service's default): the
  trained weights come back and serve; a child that dies is a failed retrain
  with its log named, and the old version keeps serving."""
  root, runtime, ds = cloud
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  cfg = runtime_lib.EdgeConfig(edge_id="iso", workdir=tmp_path / "edge",
                               train_config=QUICK, isolate_training=True,
                               gate_tolerance=1.0)
  edge = runtime_lib.EdgeRuntime(cfg, _labelled(ds),
                                 client_lib.CloudClient(server.url, "tok"),
                                 policy=policy_lib.AlwaysPolicy())
  try:
    edge.start()
    from edgecnn.edge import isolated
    assert isinstance(edge.trainer, isolated.IsolatedTrainer)
    v1 = [w.copy() for w in edge.slot.current().model.get_weights()]
    edge.classify_upload(serving.encode_png(ds.x_test[0]))
    edge.upload_once()
    assert edge.retrain()["status"] == "deployed"
    served = edge.slot.current()
    assert served.version == 2
    head = [w for w, w1 in zip(served.model.get_weights(), v1)
            if not np.array_equal(w, w1)]
    assert head, "the child's trained weights did not come back"
    assert not list((tmp_path / "edge" / "training").iterdir())  # cleaned
    # A child that cannot train: the payload it is told to read is gone.
    (tmp_path / "edge" / "shared_layers.bin").rename(tmp_path / "moved.bin")
    edge.classify_upload(serving.encode_png(ds.x_test[1]))
    edge.upload_once()
    out = edge.retrain()
    assert out["status"] == "failed" and "child.log" in out["error"]
    assert edge.status()["serving_version"] == 2
  finally:
    edge.stop()
    server.stop()

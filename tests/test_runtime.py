"""Algorithms 1 and 2 over real HTTP on loopback, with tiny models."""

import sqlite3
import time

import numpy as np
import pytest

from edgecnn import client as client_lib
from edgecnn import data as data_lib
from edgecnn import models
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.cloud import service as cloud_service
from edgecnn.edge import policy as policy_lib
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import service as edge_service
from tests.conftest import fake_dataset
from tests.conftest import save_tiny_cloud
from tests.conftest import scripted_trainer

QUICK = train_lib.get_config("paper", max_epochs=2, lr_patience=1,
                             stop_patience=2, batch_size=16)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
  root = tmp_path_factory.mktemp("cloud")
  ds = fake_dataset("fashion_mnist", n_train=80, n_test=10)
  save_tiny_cloud(root / "model")
  runtime = cloud_service.CloudRuntime(root / "model", root / "work",
                                       token="cloud-secret")
  server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  yield runtime, server, ds
  server.stop()


def make_edge(tmp_path, cloud, *, policy=None, monitor=None, trainer=None,
              threshold=8, edge_id="edge-a", cloud_val_every=10):
  runtime, server, ds = cloud
  labelled = runtime_lib.LabelledData(
      ds.x_train[:40], ds.y_train[:40],
      data_lib.subset_split(40, None, seed=0),
      ds.info, "fake")
  config = runtime_lib.EdgeConfig(edge_id=edge_id, workdir=tmp_path / edge_id,
                                  num_shared=3, retrain_threshold=threshold,
                                  upload_batch=5, train_config=QUICK,
                                  cloud_val_every=cloud_val_every)
  cloud_client = client_lib.CloudClient(server.url, "cloud-secret")
  edge = runtime_lib.EdgeRuntime(
      config, labelled, cloud_client, policy=policy, monitor=monitor,
      admin_token="admin-secret", trainer=trainer,
      validator=getattr(trainer, "validator", None))
  edge.start()
  edge_server = serving.BackgroundServer(edge_service.create_app(edge)).start()
  return edge, edge_server


def png(ds, i):
  return serving.encode_png(ds.x_train[i])


def test_alg1_over_http_frozen_layers_equal_cloud(tmp_path, cloud):
  runtime, _, _ = cloud
  edge, server = make_edge(tmp_path, cloud)
  try:
    served = edge.slot.current()
    assert served.version == 1
    for name in ["block1_conv1", "block1_conv2", "block1_conv3"]:
      layer = served.model.get_layer(name)
      assert not layer.trainable
      for a, b in zip(layer.get_weights(),
                      runtime.model.get_layer(name).get_weights()):
        np.testing.assert_array_equal(a, b)
    assert served.model.cloud_model_hash == runtime.model_hash
    assert (tmp_path / "edge-a" / "serving" / "edgecnn" / "1" /
            "saved_model.pb").exists()
    status = client_lib.EdgeClient(server.url).status()
    assert status["serving_version"] == 1 and status["bytes_from_cloud"] > 0
  finally:
    server.stop()
    edge.stop()


def test_upload_stored_before_answer_and_tf_serving_shapes(tmp_path, cloud):
  _, _, ds = cloud
  edge, server = make_edge(tmp_path, cloud)
  try:
    client = client_lib.EdgeClient(server.url)
    answer = client.classify(png(ds, 0))
    assert set(answer) == {"object_id", "class", "class_name", "probabilities",
                           "model_version"}
    assert len(answer["probabilities"]) == 10 and answer["model_version"] == 1
    # The answer is out: the object must already be committed on disk.
    db = sqlite3.connect(tmp_path / "edge-a" / "store.sqlite")
    row = db.execute("SELECT state, length(tensor) FROM objects WHERE id=?",
                     (answer["object_id"],)).fetchone()
    assert row == ("pending", 28 * 28)
    # TF Serving shapes: {"predictions": [[p0..p9], ...]} and model status.
    x = np.random.default_rng(0).random((3, 24, 24, 1)).astype(np.float32)
    r = client.http.post("/v1/models/edgecnn:predict",
                         json={"instances": x.tolist()})
    assert r.status_code == 200 and list(r.json()) == ["predictions"]
    preds = np.array(r.json()["predictions"])
    assert preds.shape == (3, 10)
    np.testing.assert_allclose(preds.sum(1), 1, atol=1e-5)
    b64 = client.predict_images("edgecnn", [png(ds, 1)])
    assert b64.shape == (1, 10)
    status = client.model_status("edgecnn")
    assert status == {"model_version_status": [{
        "version": "1", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}
    bad = client.http.post("/v1/models/edgecnn:predict",
                           json={"instances": [[1, 2]]})
    assert bad.status_code == 400 and "expects [24, 24, 1]" in bad.json()["error"]
  finally:
    server.stop()
    edge.stop()


def test_policy_holds_uploads_while_busy_then_labels_reach_store(tmp_path, cloud):
  _, _, ds = cloud
  now = [0.0]
  monitor = policy_lib.TrafficMonitor(window_s=10, clock=lambda: now[0])
  policy = policy_lib.QuietNetworkPolicy(monitor, threshold_bytes_per_s=500)
  edge, server = make_edge(tmp_path, cloud, monitor=monitor, policy=policy,
                           threshold=1000)
  try:
    client = client_lib.EdgeClient(server.url)
    ids = [client.classify(png(ds, i))["object_id"] for i in range(3)]
    monitor.record(100_000)  # heavy user traffic in this window
    assert not policy.allow()
    assert edge.upload_once()["reason"] == "network busy"
    assert edge.store.counts()["pending"] == 3
    now[0] = 60.0  # the window has passed: quiet again
    assert policy.allow()
    assert edge.upload_once()["sent"] == 3
    for i in ids:
      state = client.object_state(i)
      assert state["state"] == "labelled" and 0 <= state["label"] < 10
    status = client.status()
    assert status["objects"]["labelled"] == 3
    # Three 784-byte objects as base64 in JSON, gzipped on the way out: more
    # than nothing, less than the ~1,100 bytes each takes uncompressed.
    assert 0 < status["bytes_to_cloud"] < 3 * 1100
    assert status["bytes_from_users"] == sum(len(png(ds, i)) for i in range(3))
  finally:
    server.stop()
    edge.stop()


def test_m_labels_trigger_retrain_version_2_served(tmp_path, cloud):
  _, _, ds = cloud
  edge, server = make_edge(tmp_path, cloud, threshold=6,
                           policy=policy_lib.AlwaysPolicy(),
                           trainer=scripted_trainer([0.5, 0.9]))
  try:
    client = client_lib.EdgeClient(server.url)
    for i in range(6):
      client.classify(png(ds, 40 + i))
    edge.upload_once()
    edge.upload_once()
    assert edge.new_labels() == 6
    edge.tick()  # starts the retrain in the background
    deadline = time.monotonic() + 120
    while (len(edge.store.versions()) < 2 or edge.retraining) and \
        time.monotonic() < deadline:
      time.sleep(0.2)
    versions = edge.store.versions()
    assert len(versions) == 2 and versions[1]["num_cloud_labels"] == 6
    assert versions[1]["deployed"]
    assert client.model_status("edgecnn")["model_version_status"][0][
        "version"] == "2"
    assert client.classify(png(ds, 50))["model_version"] == 2
    assert edge.store.counts()["used"] == 6
    # TF Serving's versioned predict: the served version answers like the
    # unversioned route; version 1, deployed but swapped out, is a 404 that
    # names the version to ask for; an unknown version is a 404 too.
    x = np.random.default_rng(2).random((2, 24, 24, 1)).astype(np.float32)
    plain = client.http.post("/v1/models/edgecnn:predict",
                             json={"instances": x.tolist()})
    v2 = client.http.post("/v1/models/edgecnn/versions/2:predict",
                          json={"instances": x.tolist()})
    assert v2.status_code == 200, v2.text
    np.testing.assert_allclose(v2.json()["predictions"],
                               plain.json()["predictions"], atol=1e-6)
    v1 = client.http.post("/v1/models/edgecnn/versions/1:predict",
                          json={"instances": x.tolist()})
    assert v1.status_code == 404
    assert "no longer loaded" in v1.json()["error"]
    assert "versions/2:predict" in v1.json()["error"]
    v9 = client.http.post("/v1/models/edgecnn/versions/9:predict",
                          json={"instances": x.tolist()})
    assert v9.status_code == 404 and "versions [1, 2]" in v9.json()["error"]
    assert (tmp_path / "edge-a" / "serving" / "edgecnn" / "2").is_dir()
  finally:
    server.stop()
    edge.stop()


def test_better_retrain_deployed_worse_not(tmp_path, cloud):
  _, _, ds = cloud
  edge, server = make_edge(tmp_path, cloud, threshold=2,
                           policy=policy_lib.AlwaysPolicy(),
                           trainer=scripted_trainer([0.5, 0.7, 0.6]))
  try:
    client = client_lib.EdgeClient(server.url, "admin-secret")
    for i in range(2):
      client.classify(png(ds, 60 + i))
    client.force_upload()
    assert client.force_retrain()["status"] == "deployed"
    assert client.status()["serving_version"] == 2
    client.classify(png(ds, 62))
    client.force_upload()
    out = client.force_retrain()
    assert out["status"] == "rejected" and out["version"] == 3
    status = client.status()
    assert status["serving_version"] == 2
    assert [v["deployed"] for v in status["versions"]] == [True, True, False]
    assert not (tmp_path / "edge-a" / "serving" / "edgecnn" / "3").exists()
  finally:
    server.stop()
    edge.stop()


def test_gate_measures_both_models_on_the_same_images_incl_cloud_held_out(
    tmp_path, cloud):
  _, _, ds = cloud
  edge, server = make_edge(tmp_path, cloud, threshold=100, cloud_val_every=2,
                           policy=policy_lib.AlwaysPolicy())
  seen = []

  def validator(model, images, labels):
    seen.append((model, images.copy(), labels.copy()))
    return 1.0 if len(seen) % 2 else 0.0  # candidate 1.0, serving 0.0

  edge.validator = validator
  try:
    ids = [edge.classify_upload(png(ds, 40 + i))["object_id"]
           for i in range(12)]
    for _ in range(4):  # batches of upload_batch=5
      edge.upload_once()
    assert sorted(edge.store.labelled()[0]) == sorted(ids)
    mask = edge.val_mask(ids)
    assert mask.tolist() == edge.val_mask(ids).tolist()  # stable
    assert 0 < mask.sum() < 12
    out = edge.retrain()
    assert out["status"] == "deployed"
    own_val = len(edge.labelled.split.val)
    assert out["validation_images"] == own_val + int(mask.sum())
    (candidate, x1, y1), (serving_model, x2, y2) = seen
    assert candidate is not serving_model
    assert serving_model is not edge.slot.current().model  # v1 was judged
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert len(x1) == own_val + int(mask.sum())
    versions = edge.store.versions()
    assert versions[1]["val_accuracy"] == 1.0
    assert versions[1]["num_labels"] == len(edge.labelled.split.train) + \
        int((~mask).sum())
  finally:
    server.stop()
    edge.stop()


def test_with_extra_sends_masked_extras_to_validation(cloud):
  _, _, ds = cloud
  labelled = runtime_lib.LabelledData(
      ds.x_train[:20], ds.y_train[:20], data_lib.subset_split(20, None, seed=0),
      ds.info, "fake")
  mask = np.array([True, False, False, True, False])
  full, split = labelled.with_extra(ds.x_train[20:25], ds.y_train[20:25],
                                    val_mask=mask)
  assert sorted(split.val.tolist()) == sorted(
      labelled.split.val.tolist() + [20, 23])
  assert sorted(split.train.tolist()) == sorted(
      labelled.split.train.tolist() + [21, 22, 24])
  np.testing.assert_array_equal(full.x_train[20:], ds.x_train[20:25])
  with pytest.raises(ValueError, match="one entry per extra image"):
    labelled.with_extra(ds.x_train[20:25], ds.y_train[20:25],
                        val_mask=mask[:3])


def test_val_mask_holds_out_about_one_in_k(tmp_path, cloud):
  edge, server = make_edge(tmp_path, cloud)
  try:
    ids = [f"obj-{i}" for i in range(2000)]
    frac = edge.val_mask(ids).mean()
    assert 0.07 < frac < 0.13  # k=10: the paper's 9:1 split
    edge.config.cloud_val_every = 0
    assert not edge.val_mask(ids).any()
  finally:
    server.stop()
    edge.stop()


def test_tokens_required_for_cloud_and_admin(tmp_path, cloud):
  _, cloud_server, _ = cloud
  import httpx
  for path in ["/v1/shared_layers/3?edge=x", "/v1/models/cloud_cnn",
               "/v1/stats"]:
    assert httpx.get(cloud_server.url + path).status_code == 401
    assert httpx.get(cloud_server.url + path, headers={
        "Authorization": "Bearer wrong"}).status_code == 401
  assert httpx.post(cloud_server.url + "/v1/label", json={}).status_code == 401
  assert httpx.post(cloud_server.url + "/v1/models/cloud_cnn:predict",
                    json={}).status_code == 401
  edge, server = make_edge(tmp_path, cloud)
  try:
    for path in ["/v1/admin/upload", "/v1/admin/retrain"]:
      r = httpx.post(server.url + path)
      assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
  finally:
    server.stop()
    edge.stop()


def test_cloud_label_is_idempotent_and_rejects_bad_bodies(cloud):
  runtime, server, ds = cloud
  c = client_lib.CloudClient(server.url, "cloud-secret")
  obj = ("a" * 32, ds.x_train[0])
  first, _ = c.label("edge-z", [obj])
  again, _ = c.label("edge-z", [obj])
  assert first == again and runtime.stats["label_cache_hits"] >= 1
  with pytest.raises(client_lib.ServiceError, match="32 lowercase hex"):
    c.label("edge-z", [("../etc/passwd", ds.x_train[0])])
  with pytest.raises(client_lib.ServiceError, match="Edge id"):
    c.label("bad edge!", [obj])
  with pytest.raises(client_lib.ServiceError, match="784 bytes"):
    c.label("edge-z", [("b" * 32, ds.x_train[0][:10])])
  payload, meta = c.shared_layers(3, "edge-z")
  assert models.payload_digest(payload) == meta["sha256"]
  with pytest.raises(client_lib.ServiceError, match="1..15"):
    c.shared_layers(16, "edge-z")


def test_tampered_payload_is_refused(tmp_path, cloud):
  class Tampering:
    def __init__(self, inner):
      self.inner = inner

    def shared_layers(self, m, edge):
      data, meta = self.inner.shared_layers(m, edge)
      return data[:-1] + bytes([data[-1] ^ 1]), meta

  runtime, server, ds = cloud
  config = runtime_lib.EdgeConfig(edge_id="e", workdir=tmp_path / "e",
                                  train_config=QUICK)
  edge = runtime_lib.EdgeRuntime(
      config, runtime_lib.LabelledData(
          ds.x_train[:20], ds.y_train[:20],
          data_lib.subset_split(20, None, seed=0),
          ds.info, "fake"),
      Tampering(client_lib.CloudClient(server.url, "cloud-secret")))
  with pytest.raises(models.PayloadError, match="SHA256"):
    edge.start()
  edge.stop()
  assert not (tmp_path / "e" / "shared_layers.bin").exists()


def test_cloud_predict_matches_cloudcnn_and_tf_serving_shape(cloud):
  runtime, server, ds = cloud
  import httpx
  x = np.random.default_rng(1).random((3, 24, 24, 1), dtype=np.float32)
  r = httpx.post(server.url + "/v1/models/cloud_cnn:predict",
                 json={"instances": x.tolist()},
                 headers={"Authorization": "Bearer cloud-secret"}, timeout=60)
  assert r.status_code == 200, r.text
  got = np.asarray(r.json()["predictions"], np.float32)
  assert got.shape == (3, 10)
  np.testing.assert_allclose(got, runtime.model.predict(x, verbose=0),
                             atol=1e-5)
  # By version, as TF Serving clients often ask: version 1 only.
  by_version = httpx.post(server.url + "/v1/models/cloud_cnn/versions/1:predict",
                          json={"instances": x.tolist()},
                          headers={"Authorization": "Bearer cloud-secret"},
                          timeout=60)
  assert by_version.status_code == 200, by_version.text
  np.testing.assert_allclose(by_version.json()["predictions"], got, atol=1e-6)
  missing = httpx.post(server.url + "/v1/models/cloud_cnn/versions/2:predict",
                       json={"instances": x.tolist()},
                       headers={"Authorization": "Bearer cloud-secret"},
                       timeout=60)
  assert missing.status_code == 404 and "version 1" in missing.json()["error"]

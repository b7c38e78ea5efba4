"""The whole framework on one machine, on loopback: the project's main job.

1. Train (or reuse a cached) CloudCNN.
2. Start the cloud service and two edge services (EdgeCNN-3 and EdgeCNN-10,
   the paper's future-work setting of edges of different depth) over HTTP.
3. Initialise each edge from CloudCNN's shared layers (Alg. 1) on its own N
   labelled images.
4. Replay a stream of simulated users uploading unlabelled training images
   (never test images, never an edge's labelled images) as PNG through the
   edges' /v1/classify endpoints, in bursts separated by quiet gaps. Each
   edge's QuietNetworkPolicy holds uploads to the cloud during bursts and
   sends them in the gaps; every M cloud labels trigger a retrain (Alg. 2).
5. Evaluate every model version each edge deployed (from its TF Serving
   SavedModel) on test images, beside EdgeCNN0 trained from scratch on the
   same number of labels and beside CloudCNN, and write one row per edge and
   model version.
"""

from __future__ import annotations

import datetime
import logging
import pathlib
import shutil
import time
from typing import Callable

import keras
import numpy as np
import pandas as pd

from edgecnn import client as client_lib
from edgecnn import cloud_model
from edgecnn import data as data_lib
from edgecnn import evaluate as eval_lib
from edgecnn import export as export_lib
from edgecnn import models
from edgecnn import results
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.cloud import service as cloud_service
from edgecnn.edge import policy as policy_lib
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import service as edge_service
# Defined in config.py (no TensorFlow there) and re-exported.
from edgecnn.config import MainJobConfig

logger = logging.getLogger("edgecnn.main_job")

# CloudCNNs trained by experiments.train_cloud and committed with the source
# (results/models/README.md); present in a source checkout only.
SHIPPED_MODELS = pathlib.Path(__file__).resolve().parents[1] / "results" / "models"

COLUMNS = ("edge_id", "num_shared", "model_version", "deployed", "num_labels",
           "num_cloud_labels", "wrong_cloud_labels", "val_accuracy",
           "test_accuracy_10crop", "test_accuracy_center",
           "edgecnn0_test_accuracy_10crop", "cloud_test_accuracy_10crop",
           "train_time_s", "test_images", "dataset", "preset", "seed",
           "commit", "timestamp")


def _progress(say: Callable[[str], None], message: str) -> None:
  say(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}")


class _ServingModel:
  """A SavedModel's serving_default with Keras' predict signature."""

  def __init__(self, path: pathlib.Path):
    self.fn = export_lib.load_serving_fn(path)

  def predict(self, x, batch_size=256, verbose=0):
    x = np.asarray(x, np.float32)
    return np.concatenate([self.fn(x[i:i + batch_size])
                           for i in range(0, len(x), batch_size)])


def _ensure_cloud(cfg: MainJobConfig, dataset: data_lib.Dataset,
                  say) -> pathlib.Path:
  if cfg.cloud_dir is not None:
    if not cloud_model.is_trained(cfg.cloud_dir):
      raise FileNotFoundError(f"--cloud_dir {cfg.cloud_dir} holds no trained "
                              "CloudCNN (build.json, weights, dataset.json, "
                              "train_result.json).")
    _progress(say, f"using CloudCNN from {cfg.cloud_dir}")
    return pathlib.Path(cfg.cloud_dir)
  shipped = SHIPPED_MODELS / f"{dataset.info.name}-{cfg.preset}-seed0"
  if cfg.use_shipped_cloud and cloud_model.is_trained(shipped):
    _progress(say, f"using the CloudCNN shipped in {shipped} (see its "
                   "train_result.json; --nouse_shipped_cloud trains one)")
    return shipped
  directory = cfg.workdir / "cloud" / (f"{dataset.info.name}-{cfg.preset}-"
                                       f"seed{cfg.seed}-e{cfg.cloud_epochs}")
  if cloud_model.is_trained(directory):
    _progress(say, f"reusing cached CloudCNN in {directory}")
    return directory
  _progress(say, f"training CloudCNN ({cfg.preset}, {cfg.cloud_epochs} epochs "
                 f"on {len(dataset.x_train)} images; cached for next time)")
  config = train_lib.get_config("paper", max_epochs=cfg.cloud_epochs)
  _, result = cloud_model.train_cloud(dataset, config, preset=cfg.preset,
                                      seed=cfg.seed, directory=directory,
                                      num_images=cfg.cloud_num_images,
                                      shared=cfg.edges)
  _progress(say, f"CloudCNN trained in {result.wall_time_s:.0f} s: 10-crop "
                 f"test accuracy {result.test_accuracy_10crop:.4f}")
  return directory


def run(cfg: MainJobConfig, say: Callable[[str], None] = print) -> pd.DataFrame:
  """Runs the main job and returns its rows (also appended to the CSV)."""
  start = time.perf_counter()
  if cfg.fresh and (cfg.workdir / "edges").exists():
    shutil.rmtree(cfg.workdir / "edges")
  dataset = data_lib.load_dataset(cfg.dataset, cfg.data_dir)
  info = dataset.info
  keras.utils.set_random_seed(cfg.seed)
  cloud_dir = _ensure_cloud(cfg, dataset, say)

  runtime = cloud_service.CloudRuntime(cloud_dir, cfg.workdir / "cloud-service")
  cloud_server = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  _progress(say, f"cloud service on {cloud_server.url} (CloudCNN "
                 f"{runtime.model_hash[:12]})")
  crop = runtime.crop
  rng = np.random.default_rng(cfg.seed)
  test_idx = rng.permutation(len(dataset.x_test))[:cfg.test_images]
  x_test, y_test = dataset.x_test[test_idx], dataset.y_test[test_idx]
  cloud_acc = eval_lib.accuracy(eval_lib.predict_probs(
      runtime.model, x_test, crop_size=crop, flip=info.flip), y_test)
  _progress(say, f"CloudCNN 10-crop accuracy on {len(test_idx)} test images: "
                 f"{cloud_acc:.4f}")

  # Disjoint images per edge: labelled sets and upload streams never overlap.
  order = np.random.default_rng(cfg.seed + 1).permutation(len(dataset.x_train))
  per_edge = cfg.num_labelled + cfg.stream_per_edge
  edges, servers, streams, labelled_sets = [], [], [], []
  try:
    for k, m in enumerate(cfg.edges):
      idx = order[k * per_edge:(k + 1) * per_edge]
      own, stream = idx[:cfg.num_labelled], idx[cfg.num_labelled:]
      split = data_lib.subset_split(len(own), None, seed=cfg.seed)
      labelled = runtime_lib.LabelledData(
          dataset.x_train[own], dataset.y_train[own], split, info,
          f"{dataset.source} main-job edge {k}")
      monitor = policy_lib.TrafficMonitor(cfg.traffic_window_s)
      edge_id = f"edge-m{m}"
      config = runtime_lib.EdgeConfig(
          edge_id=edge_id, workdir=cfg.workdir / "edges" / edge_id,
          num_shared=m, retrain_threshold=cfg.retrain_threshold,
          upload_batch=64, upload_interval_s=0.5,
          train_config=train_lib.get_config("paper",
                                            max_epochs=cfg.edge_max_epochs),
          model_seed=cfg.seed)
      edge = runtime_lib.EdgeRuntime(
          config, labelled,
          client_lib.CloudClient(cloud_server.url, runtime.token),
          policy=policy_lib.QuietNetworkPolicy(monitor, cfg.quiet_bytes_per_s),
          monitor=monitor)
      _progress(say, f"{edge_id}: initialisation phase (Alg. 1), EdgeCNN1-{m} "
                     f"on {cfg.num_labelled} labelled images")
      edge.start()
      served = edge.slot.current()
      _progress(say, f"{edge_id}: serving version {served.version}")
      server = serving.BackgroundServer(edge_service.create_app(edge)).start()
      edge.run_background()
      edges.append(edge)
      servers.append(server)
      streams.append(stream)
      labelled_sets.append(labelled)

    # The stream of users, in bursts with quiet gaps between them.
    clients = [client_lib.EdgeClient(s.url) for s in servers]
    uploaded: list[dict[str, int]] = [{} for _ in edges]
    pos = 0
    while pos < cfg.stream_per_edge:
      for k, (edge, client) in enumerate(zip(edges, clients)):
        for i in streams[k][pos:pos + cfg.burst]:
          answer = client.classify(serving.encode_png(dataset.x_train[i]))
          uploaded[k][answer["object_id"]] = int(i)
      pos += cfg.burst
      for edge in edges:
        s = edge.status()
        _progress(say, f"{s['edge_id']}: {pos} uploads, objects {s['objects']}"
                       f", serving v{s['serving_version']}, network "
                       f"{s['network']['measured_rate_bytes_per_s']:.0f} B/s "
                       f"({'quiet' if edge.policy.allow() else 'busy: holding'})")
      time.sleep(cfg.quiet_gap_s)

    # Drain: let the quiet network carry the rest and finish retraining.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
      busy = False
      for edge in edges:
        counts = edge.store.counts()
        if counts["pending"] or counts["sent"] or edge.retraining or \
            edge.new_labels() >= cfg.retrain_threshold:
          busy = True
      if not busy:
        break
      time.sleep(1.0)
    for edge in edges:
      s = edge.status()
      _progress(say, f"{s['edge_id']}: done; objects {s['objects']}, versions "
                     f"{[(v['version'], v['deployed']) for v in s['versions']]},"
                     f" {s['bytes_from_users']} bytes from users, "
                     f"{s['bytes_to_cloud']} bytes to the cloud")

    rows = []
    commit = results.git_commit(pathlib.Path(__file__).parent)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    for k, edge in enumerate(edges):
      ids, _, cloud_labels = edge.store.labelled()
      truth = {i: dataset.y_train[uploaded[k][i]] for i in ids}
      for v in edge.store.versions():
        n_cloud = v["num_cloud_labels"]
        used = ids[:n_cloud]  # labelled() is ordered by labelling time
        wrong = int(sum(cloud_labels[j] != truth[i]
                        for j, i in enumerate(used)))
        row = {"edge_id": edge.config.edge_id, "num_shared":
               edge.config.num_shared, "model_version": v["version"],
               "deployed": v["deployed"], "num_labels": v["num_labels"],
               "num_cloud_labels": n_cloud, "wrong_cloud_labels": wrong,
               "val_accuracy": v["val_accuracy"],
               "train_time_s": v["info"].get("wall_time_s"),
               "cloud_test_accuracy_10crop": cloud_acc,
               "test_images": len(test_idx), "dataset": info.name,
               "preset": cfg.preset, "seed": cfg.seed, "commit": commit,
               "timestamp": stamp}
        if v["deployed"]:
          model = _ServingModel(edge.workdir / "serving" /
                                runtime_lib.MODEL_NAME / str(v["version"]))
          row["test_accuracy_10crop"] = eval_lib.accuracy(
              eval_lib.predict_probs(model, x_test, crop_size=crop,
                                     flip=info.flip), y_test)
          row["test_accuracy_center"] = eval_lib.accuracy(
              eval_lib.predict_probs(model, x_test, crop_size=crop,
                                     mode="center"), y_test)
        row["edgecnn0_test_accuracy_10crop"] = _edgecnn0_accuracy(
            edge, labelled_sets[k], dataset, [uploaded[k][i] for i in used],
            edge.val_mask(used), x_test, y_test, cfg)
        rows.append(row)
        _progress(say, f"{row['edge_id']} v{row['model_version']}: "
                       f"EdgeCNN1 {row.get('test_accuracy_10crop', float('nan')):.4f}"
                       f" vs EdgeCNN0 {row['edgecnn0_test_accuracy_10crop']:.4f}"
                       f" ({row['num_labels']} labels)")
  finally:
    for server in servers:
      server.stop()
    for edge in edges:
      edge.stop()
    cloud_server.stop()
  frame = pd.DataFrame(rows, columns=list(COLUMNS))
  cfg.results_csv.parent.mkdir(parents=True, exist_ok=True)
  frame.to_csv(cfg.results_csv, mode="a", index=False,
               header=not cfg.results_csv.exists())
  _progress(say, f"main job finished in {time.perf_counter() - start:.0f} s; "
                 f"rows appended to {cfg.results_csv}")
  return frame


def _edgecnn0_accuracy(edge, labelled, dataset, uploaded_idx, val_mask,
                       x_test, y_test, cfg) -> float:
  """EdgeCNN0-m from scratch on the same training and validation images as
  the edge's version, with true labels (the paper's fair comparison)."""
  ds, split = labelled.with_extra(dataset.x_train[uploaded_idx],
                                  dataset.y_train[uploaded_idx],
                                  val_mask=val_mask,
                                  x_test=x_test, y_test=y_test)
  model = models.build_edge_cnn_from_payload(edge.payload, pretrained=False,
                                             seed=cfg.seed)
  config = train_lib.get_config("paper", max_epochs=cfg.edge_max_epochs,
                                crop_size=edge.crop)
  result = train_lib.train_and_evaluate(model, ds, split, config, seed=cfg.seed,
                                        label=f"EdgeCNN0-{edge.config.num_shared}")
  return result.test_accuracy_10crop


def format_table(frame: pd.DataFrame) -> str:
  """The final table as fixed-width text."""
  cols = ["edge_id", "model_version", "deployed", "num_labels",
          "num_cloud_labels", "wrong_cloud_labels", "val_accuracy",
          "test_accuracy_10crop", "edgecnn0_test_accuracy_10crop",
          "cloud_test_accuracy_10crop"]
  return frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")

"""The edge server's logic: Algorithm 1 at first start, serving, the upload
loop and retraining of Algorithm 2 (Eq. 2), independent of HTTP.

Files under the edge's workdir::

  store.sqlite                 objects and model versions (edge.store)
  shared_layers.bin            the payload received from the cloud
  versions/<k>.weights.h5      weights of model version k
  serving/edgecnn/<k>/         SavedModel of each deployed version, in the
                               TF Serving layout (point a TF Serving at
                               serving/ and it serves the newest)
  token                        the admin bearer token (0600)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import threading
import time
import traceback
from typing import Callable

import numpy as np

from edgecnn import data as data_lib
from edgecnn import evaluate as evaluate_lib
from edgecnn import export as export_lib
from edgecnn import models
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.edge import policy as policy_lib
from edgecnn.edge import store as store_lib

logger = logging.getLogger("edgecnn.edge")
MODEL_NAME = "edgecnn"


@dataclasses.dataclass
class LabelledData:
  """The edge's own labelled images, split into training and validation."""
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int64 (N,)
  split: data_lib.Split
  info: data_lib.DatasetInfo
  source: str

  def with_extra(self, images: np.ndarray, labels: np.ndarray, *,
                 val_mask: np.ndarray | None = None,
                 x_test: np.ndarray | None = None,
                 y_test: np.ndarray | None = None
                 ) -> tuple[data_lib.Dataset, data_lib.Split]:
    """These images plus extra ones (Eq. 2's N + M).

    Extra images train, except those where ``val_mask`` is True: they join
    this set's held-out images in the validation split.
    """
    x = np.concatenate([self.images, images])
    y = np.concatenate([self.labels, labels])
    n = len(self.images)
    extra = np.arange(n, n + len(images))
    mask = (np.zeros(len(images), bool) if val_mask is None
            else np.asarray(val_mask, bool))
    if mask.shape != (len(images),):
      raise ValueError(f"val_mask must have one entry per extra image "
                       f"({len(images)}). Received shape {mask.shape}.")
    split = data_lib.Split(
        train=np.concatenate([self.split.train, extra[~mask]]),
        val=np.concatenate([self.split.val, extra[mask]]))
    ds = data_lib.Dataset(self.info, x, y,
                          x[:0] if x_test is None else x_test,
                          y[:0] if y_test is None else y_test, self.source)
    return ds, split


def labelled_from_dataset(name: str, num_images: int, seed: int,
                          data_dir: str | None = None) -> LabelledData:
  """The edge's labelled set as a seeded subset of a dataset's training set
  (its 9:1 split gives the edge's held-out validation images)."""
  ds = data_lib.load_dataset(name, data_dir)
  split = data_lib.subset_split(len(ds.x_train), num_images, seed=seed)
  idx = np.concatenate([split.train, split.val])
  local = data_lib.Split(train=np.arange(len(split.train)),
                         val=np.arange(len(split.train), len(idx)))
  return LabelledData(ds.x_train[idx], ds.y_train[idx], local, ds.info,
                      f"{ds.source} N={num_images} seed={seed}")


def labelled_from_directory(directory: str | pathlib.Path, dataset: str, *,
                            seed: int = 0) -> LabelledData:
  """The edge's labelled set from ``<dir>/<class>/<image>.png|jpg``, where
  <class> is a class index or a class name of ``dataset``."""
  info = data_lib.dataset_info(dataset)
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"Labelled-image directory {root} does not exist.")
  names = {n: i for i, n in enumerate(info.class_names)}
  images, labels = [], []
  for sub in sorted(p for p in root.iterdir() if p.is_dir()):
    label = int(sub.name) if sub.name.isdigit() else names.get(sub.name)
    if label is None or not 0 <= label < info.num_classes:
      raise ValueError(f"{sub}: not a class of {dataset} (use 0.."
                       f"{info.num_classes - 1} or one of {info.class_names}).")
    for f in sorted(sub.iterdir()):
      if f.suffix.lower() in (".png", ".jpg", ".jpeg"):
        images.append(serving.prepare_image(f.read_bytes(), info.image_shape))
        labels.append(label)
  if len(images) < 2:
    raise ValueError(f"{root} holds {len(images)} labelled images; need >= 2.")
  split = data_lib.subset_split(len(images), None, seed=seed)
  return LabelledData(np.stack(images), np.array(labels, np.int64), split,
                      info, str(root))


@dataclasses.dataclass
class EdgeConfig:
  """Everything an edge needs to know.

  Attributes:
    edge_id: this edge's name, sent with every cloud request.
    workdir: where the store, models and token live.
    num_shared: m, the number of CloudCNN layers to receive.
    retrain_threshold: M, new cloud labels that trigger a retrain.
    upload_batch: objects per labelling request.
    upload_interval_s: how often the upload loop looks for work.
    max_backoff_s: cap of the exponential backoff after a failed upload.
    gate_tolerance: deploy a retrained model if its validation accuracy is
      at least the serving version's minus this (0: "not worse"). Both are
      measured afresh on the same validation images (centre crop).
    cloud_val_every: every k-th cloud-labelled object (chosen by a hash of
      its id, so an object stays on its side across retrains) is held out for
      validation instead of training: the paper's 9:1 split applied to N + M
      (k=10). With 0 only the edge's own held-out images validate, which at
      N=120 are 12 images, too few to tell two models apart.
    train_config: schedule of initial training and retraining.
    model_seed: seed of the fresh head.
    cloud_wait_s: how long start() waits for an unreachable cloud.
    max_objects: storage quota; uploads beyond it are refused (507) while
      prediction goes on, until objects are compacted.
    max_batch, max_batch_wait_s: server-side dynamic batching of concurrent
      predictions (max_batch=1 turns it off).
    isolate_training: train every version in a child process
      (edge/isolated.py): TensorFlow keeps about 40 MB per model trained in
      a process, so a long-lived edge must not train in its own.
  """
  edge_id: str
  workdir: pathlib.Path
  num_shared: int = 3
  retrain_threshold: int = 200
  upload_batch: int = 64
  upload_interval_s: float = 1.0
  max_backoff_s: float = 60.0
  gate_tolerance: float = 0.0
  cloud_val_every: int = 10
  train_config: train_lib.TrainConfig = dataclasses.field(
      default_factory=lambda: train_lib.get_config("paper", max_epochs=60))
  model_seed: int = 0
  cloud_wait_s: float = 300.0
  max_objects: int | None = None
  max_batch: int = 64
  max_batch_wait_s: float = 0.001
  isolate_training: bool = False


class EdgeRuntime:
  """One edge server.

  Args:
    config: the EdgeConfig.
    labelled: the edge's own labelled images.
    cloud: a client with ``shared_layers(m, edge)`` and
      ``label(edge, objects)`` (client.CloudClient).
    policy: the upload policy; default QuietNetworkPolicy over ``monitor``.
    monitor: the WAN traffic monitor.
    admin_token: bearer token of the admin endpoints (generated if None).
    trainer: replaces train.train_and_evaluate (tests inject failures).
    validator: ``validator(model, images, labels) -> accuracy`` of the
      retrain gate; default: centre-crop accuracy (tests script it).
  """

  def __init__(self, config: EdgeConfig, labelled: LabelledData, cloud, *,
               policy: policy_lib.UploadPolicy | None = None,
               monitor: policy_lib.TrafficMonitor | None = None,
               admin_token: str | None = None,
               trainer: Callable | None = None,
               validator: Callable | None = None):
    self.config = config
    self.labelled = labelled
    self.info = labelled.info
    self.cloud = cloud
    self.workdir = pathlib.Path(config.workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.monitor = monitor or policy_lib.TrafficMonitor()
    self.policy = policy or policy_lib.QuietNetworkPolicy(self.monitor, 1e12)
    self.admin_token = serving.load_or_create_token(self.workdir / "token",
                                                    admin_token)
    self.store = store_lib.Store(self.workdir / "store.sqlite",
                                 self.info.image_shape)
    self.slot = serving.ModelSlot()
    self.batcher = serving.DynamicBatcher(
        self.slot, config.max_batch, config.max_batch_wait_s) \
        if config.max_batch > 1 else None
    if trainer is None and config.isolate_training:
      from edgecnn.edge import isolated
      trainer = isolated.IsolatedTrainer(
          self.workdir / "shared_layers.bin", self.workdir / "training",
          {"num_classes": self.info.num_classes, "pretrained": True,
           "seed": config.model_seed})
    self.trainer = trainer or train_lib.train_and_evaluate
    self.validator = validator or self._center_accuracy
    self.payload: bytes | None = None
    self.crop = None
    self.last_error: str | None = None
    self.last_upload_error: str | None = None
    self.retraining = False
    self._retrain_lock = threading.Lock()
    self._stop = threading.Event()
    self._wake = threading.Event()
    self._thread: threading.Thread | None = None
    self._backoff = 0.0
    self._next_upload = 0.0
    self._deployed: frozenset[int] | None = None

  # -- Algorithm 1 ----------------------------------------------------------------
  def _fetch_payload(self) -> bytes:
    path = self.workdir / "shared_layers.bin"
    if path.is_file():
      return path.read_bytes()
    data, meta = self._cloud_call_with_retry(
        lambda: self.cloud.shared_layers(self.config.num_shared,
                                         self.config.edge_id))
    if meta.get("sha256") and models.payload_digest(data) != meta["sha256"]:
      raise models.PayloadError("Shared-layers payload does not match its "
                                "X-Payload-SHA256 header; refusing it.")
    manifest, _ = models.read_payload(data)
    if meta.get("model_hash") and manifest["cloud_model_hash"] != meta["model_hash"]:
      raise models.PayloadError("Payload's cloud-model hash differs from the "
                                "cloud's X-Cloud-Model-Hash; refusing it.")
    if manifest["num_shared"] != self.config.num_shared:
      raise models.PayloadError(f"Asked for m={self.config.num_shared}, got a "
                                f"payload of m={manifest['num_shared']}.")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    self.store.add_counter("bytes_from_cloud", len(data))
    return data

  def _cloud_call_with_retry(self, call):
    """Retries while the cloud is unreachable or answers 5xx (it may start
    after the edge), up to ``cloud_wait_s``; client errors fail at once."""
    import httpx
    from edgecnn import client as client_lib
    deadline = time.monotonic() + self.config.cloud_wait_s
    delay = 0.5
    while True:
      try:
        return call()
      except (httpx.TransportError, client_lib.ServiceError) as e:
        if isinstance(e, client_lib.ServiceError) and e.status < 500:
          raise
        if time.monotonic() + delay > deadline:
          raise RuntimeError(f"The cloud is unreachable after "
                             f"{self.config.cloud_wait_s:.0f} s: {e}") from e
        logger.warning("edge %s: cloud not reachable (%s); retrying in %.1f s",
                       self.config.edge_id, e, delay)
        time.sleep(delay)
        delay = min(delay * 2, 10.0)

  def _build(self) -> "keras.Model":  # noqa: F821
    return models.build_edge_cnn_from_payload(
        self.payload, self.info.num_classes, pretrained=True,
        seed=self.config.model_seed)

  def start(self) -> None:
    """Loads the newest deployed version, or runs Alg. 1 to make version 1."""
    self.payload = self._fetch_payload()
    manifest, _ = models.read_payload(self.payload)
    self.crop = manifest["input_shape"][0]
    deployed = [v for v in self.store.versions() if v["deployed"]]
    if deployed:
      latest = deployed[-1]
      model = self._build()
      model.load_weights(self._weights_path(latest["version"]))
      self.slot.swap(model, latest["version"])
      logger.info("edge %s serves version %d from disk", self.config.edge_id,
                  latest["version"])
      return
    logger.info("edge %s: initialisation phase (Alg. 1) with m=%d on %d "
                "labelled images", self.config.edge_id, self.config.num_shared,
                len(self.labelled.labels))
    model, result, _ = self._train(
        np.zeros((0, *self.info.image_shape), np.uint8), np.zeros(0, np.int64))
    self._deploy(model, 1, result, num_cloud_labels=0, reason="initialisation",
                 num_train=len(self.labelled.split.train))

  def _weights_path(self, version: int) -> pathlib.Path:
    return self.workdir / "versions" / f"{version}.weights.h5"

  def val_mask(self, ids) -> np.ndarray:
    """Which cloud-labelled objects validate rather than train."""
    every = self.config.cloud_val_every
    if not every:
      return np.zeros(len(ids), bool)
    return np.array([int(hashlib.sha256(str(i).encode()).hexdigest()[:8], 16)
                     % every == 0 for i in ids], bool)

  def _train(self, extra_images: np.ndarray, extra_labels: np.ndarray,
             val_mask: np.ndarray | None = None):
    """Trains EdgeCNN1 on the labelled images plus cloud-labelled ones (Eq. 2).

    Returns the model, the training result and the (dataset, split) used.
    """
    ds, split = self.labelled.with_extra(extra_images, extra_labels,
                                         val_mask=val_mask)
    model = self._build()
    config = dataclasses.replace(self.config.train_config, crop_size=self.crop)
    result = self.trainer(model, ds, split, config, seed=self.config.model_seed,
                          evaluate_test=False,
                          label=f"{self.config.edge_id} EdgeCNN1-"
                                f"{self.config.num_shared}")
    return model, result, (ds, split)

  def _center_accuracy(self, model, images: np.ndarray,
                       labels: np.ndarray) -> float:
    # Eager forward passes: model.predict would build and keep a predict
    # function on every model the gate looks at (memory across many swaps).
    x = data_lib.center_crop(data_lib.preprocess(images), self.crop)
    probs = np.concatenate([np.asarray(model(x[i:i + 256], training=False))
                            for i in range(0, len(images), 256)]) \
        if len(images) else np.zeros((0, self.info.num_classes), np.float32)
    return evaluate_lib.accuracy(probs, labels)

  def _deploy(self, model, version: int, result, *, num_cloud_labels: int,
              reason: str, val_accuracy: float | None = None,
              num_train: int) -> None:
    path = self._weights_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    export_lib.export_saved_model(model, self.workdir / "serving", MODEL_NAME,
                                  version, overwrite=True)
    val = result.best_val_accuracy if val_accuracy is None else val_accuracy
    self.store.add_version(
        version, deployed=True, val_accuracy=val,
        num_labels=num_train,
        num_cloud_labels=num_cloud_labels, reason=reason,
        info={"epochs": result.epochs, "wall_time_s": result.wall_time_s,
              "stop_reason": result.stop_reason})
    self._deployed = None  # re-read on the next request
    self.slot.swap(model, version)
    logger.info("edge %s deployed version %d (val %.4f, %d cloud labels)",
                self.config.edge_id, version, val, num_cloud_labels)

  # -- serving --------------------------------------------------------------------
  def deployed_versions(self) -> frozenset[int]:
    """Versions that were deployed (answerable by version), without a
    database query per request."""
    if self._deployed is None:
      self._deployed = frozenset(v["version"] for v in self.store.versions()
                                 if v["deployed"])
    return self._deployed

  def predict(self, x: np.ndarray) -> tuple[np.ndarray, int]:
    if self.batcher is not None and len(x) < self.config.max_batch:
      return self.batcher.predict(x)
    served = self.slot.current()
    if served is None:
      raise serving.RequestError("No model is being served yet; the edge is "
                                 "initialising.", 503)
    return served.predict(x), served.version

  async def predict_async(self, x: np.ndarray) -> tuple[np.ndarray, int]:
    """predict() for an asyncio handler: waits for the dynamic batcher
    without occupying a worker thread (at high concurrency the thread pool,
    not the model, would otherwise bound throughput)."""
    import asyncio
    if self.batcher is not None and len(x) < self.config.max_batch:
      return await asyncio.wrap_future(self.batcher.submit(x))
    return await asyncio.get_running_loop().run_in_executor(None, self.predict,
                                                            x)

  def classify_upload(self, raw: bytes, timings: dict | None = None) -> dict:
    """Pre-processes an upload, stores it durably, then answers (Alg. 2).

    ``timings``, if given, receives the model's inference time in seconds.
    """
    quota = self.config.max_objects
    if quota is not None and self.store.count_all() >= quota:
      raise serving.RequestError(
          f"Storage quota of {quota} objects reached; uploads are refused "
          "until objects used by a deployed version are compacted (POST "
          "/v1/admin/compact). Prediction without storing still works "
          "(/v1/models/edgecnn:predict).", 507)
    tensor = serving.prepare_image(raw, self.info.image_shape)
    start = time.perf_counter()
    probs, version = self.predict(serving.model_input(tensor[None], self.crop))
    if timings is not None:
      timings["inference_s"] = time.perf_counter() - start
    object_id = store_lib.new_object_id()
    self.store.add_object(object_id, tensor, len(raw), int(probs[0].argmax()),
                          version)
    self.store.add_counter("bytes_from_users", len(raw))
    self.monitor.record(len(raw))
    cls = int(probs[0].argmax())
    return {"object_id": object_id, "class": cls,
            "class_name": self.info.class_names[cls],
            "probabilities": [float(p) for p in probs[0]],
            "model_version": version}

  # -- Algorithm 2: upload loop and retraining --------------------------------------------
  def upload_once(self, force: bool = False) -> dict:
    """Sends one batch of pending objects to the cloud if the policy allows."""
    if not force and not self.policy.allow():
      return {"sent": 0, "reason": "network busy"}
    ids, tensors = self.store.take_pending(self.config.upload_batch)
    if not ids:
      return {"sent": 0, "reason": "nothing pending"}
    try:
      labels, sent_bytes = self.cloud.label(self.config.edge_id,
                                            list(zip(ids, tensors)))
      answer = {}
      for item in labels:
        if not isinstance(item, dict) or "id" not in item or "label" not in item:
          raise ValueError(f"Malformed label item from the cloud: {item!r:.200}")
        answer[item["id"]] = item["label"]
      if set(answer) != set(ids):
        raise ValueError(f"Cloud answered for {len(answer)} ids, "
                         f"{len(set(answer) & set(ids))} of the {len(ids)} sent.")
      self.store.set_labels(answer, self.info.num_classes)
    except Exception as e:  # network errors, garbage answers: keep the objects
      self.store.return_to_pending(ids)
      self._backoff = min(self.config.max_backoff_s,
                          max(1.0, self._backoff * 2))
      self._next_upload = time.monotonic() + self._backoff
      self.last_upload_error = f"{type(e).__name__}: {e}"
      logger.warning("edge %s: upload of %d objects failed (%s); retry in "
                     "%.1f s", self.config.edge_id, len(ids),
                     self.last_upload_error, self._backoff)
      return {"sent": 0, "reason": self.last_upload_error}
    self._backoff = 0.0
    self.last_upload_error = None
    self.store.add_counter("bytes_to_cloud", sent_bytes)
    self.monitor.record(sent_bytes)
    logger.info("edge %s: %d objects labelled by the cloud", self.config.edge_id,
                len(ids))
    return {"sent": len(ids), "reason": "ok"}

  def new_labels(self) -> int:
    counts = self.store.counts()
    total = counts["labelled"] + counts["used"]
    return total - int(self.store.counters().get("labels_at_last_retrain", 0))

  def retrain(self) -> dict:
    """Retrains on N + M labels with m layers frozen; deploys if not worse."""
    if not self._retrain_lock.acquire(blocking=False):
      return {"status": "already retraining"}
    self.retraining = True
    try:
      ids, images, labels = self.store.labelled()
      self.store.set_counter("labels_at_last_retrain", len(ids))
      served = self.slot.current()
      versions = self.store.versions()
      candidate = max(v["version"] for v in versions) + 1
      mask = self.val_mask(ids)
      model, result, (ds, split) = self._train(images, labels, mask)
      # Both models on the same validation images, measured now: the
      # serving version's stored value was the best of its own epochs on a
      # different (smaller) set, an optimistic yardstick.
      x_val, y_val = ds.x_train[split.val], ds.y_train[split.val]
      new = self.validator(model, x_val, y_val)
      old = self.validator(served.model, x_val, y_val)
      num_val = len(split.val)
      num_train = len(split.train)
      if new + 1e-12 >= old - self.config.gate_tolerance:
        self._deploy(model, candidate, result, num_cloud_labels=len(ids),
                     val_accuracy=new, num_train=num_train,
                     reason=f"val {new:.4f} >= {old:.4f} - "
                            f"{self.config.gate_tolerance} on {num_val} "
                            f"images")
        self.store.mark_used(ids, candidate)
        outcome = "deployed"
      else:
        self.store.add_version(
            candidate, deployed=False, val_accuracy=new,
            num_labels=num_train, num_cloud_labels=len(ids),
            reason=f"rejected: val {new:.4f} < {old:.4f} - "
                   f"{self.config.gate_tolerance} on {num_val} images",
            info={"epochs": result.epochs, "wall_time_s": result.wall_time_s})
        outcome = "rejected"
        logger.info("edge %s: candidate %d rejected (val %.4f < %.4f)",
                    self.config.edge_id, candidate, new, old)
      self.last_error = None
      return {"status": outcome, "version": candidate, "val_accuracy": new,
              "serving_val_accuracy": old, "cloud_labels": len(ids),
              "validation_images": num_val}
    except Exception as e:
      self.last_error = f"retrain failed: {type(e).__name__}: {e}"
      logger.error("edge %s: %s\n%s", self.config.edge_id, self.last_error,
                   traceback.format_exc())
      return {"status": "failed", "error": self.last_error}
    finally:
      self.retraining = False
      self._retrain_lock.release()

  def tick(self) -> None:
    """One round of the background loop."""
    if time.monotonic() >= self._next_upload and self.store.counts()["pending"]:
      self.upload_once()
    if self.new_labels() >= self.config.retrain_threshold and not self.retraining:
      threading.Thread(target=self.retrain, name="retrain", daemon=True).start()

  def run_background(self) -> None:
    def loop():
      while not self._stop.is_set():
        try:
          self.tick()
        except Exception as e:  # never let the loop die
          self.last_error = f"background loop: {type(e).__name__}: {e}"
          logger.exception("edge %s background loop", self.config.edge_id)
        self._wake.wait(self.config.upload_interval_s)
        self._wake.clear()
    self._thread = threading.Thread(target=loop, name="edge-loop", daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    self._wake.set()
    if self._thread:
      self._thread.join(timeout=10)
    with self._retrain_lock:  # let a running retrain finish its writes
      pass
    if self.batcher is not None:
      self.batcher.stop()
    self.store.close()

  def status(self) -> dict:
    served = self.slot.current()
    counters = self.store.counters()
    return {
        "edge_id": self.config.edge_id,
        "num_shared": self.config.num_shared,
        "serving_version": served.version if served else None,
        "objects": self.store.counts(),
        "versions": [{k: v[k] for k in ("version", "deployed", "val_accuracy",
                                        "num_labels", "num_cloud_labels",
                                        "reason", "created")}
                     for v in self.store.versions()],
        "new_labels_since_retrain": self.new_labels(),
        "retrain_threshold": self.config.retrain_threshold,
        "retraining": self.retraining,
        "last_upload": self.store.last_upload(),
        "network": {**self.policy.describe(),
                    "measured_rate_bytes_per_s": self.monitor.rate()},
        "bytes_from_users": int(counters.get("bytes_from_users", 0)),
        "bytes_to_cloud": int(counters.get("bytes_to_cloud", 0)),
        "bytes_from_cloud": int(counters.get("bytes_from_cloud", 0)),
        "stored_objects": self.store.count_all(),
        "max_objects": self.config.max_objects,
        "last_error": self.last_error,
        "last_upload_error": self.last_upload_error,
    }

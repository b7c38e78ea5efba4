"""The cloud service: CloudCNN's shared layers, labels and predictions.

Endpoints (all but /healthz need ``Authorization: Bearer <token>``):

  GET  /healthz
  GET  /v1/shared_layers/{m}?edge=<edge id>   Alg. 1 step 1: the payload of
       CloudCNN's m lower layers; headers X-Cloud-Model-Hash and
       X-Payload-SHA256 let the edge check what it received.
  POST /v1/label                              Alg. 2 steps 2-3
       {"edge": id, "objects": [{"id": hex32, "b64": <uint8 HxWxC bytes>}]}
       -> {"labels": [{"id", "label", "probabilities"}], "model_hash"}
       Idempotent per (edge, object id): a repeated id gets the stored answer.
  POST /v1/models/{name}[/versions/1]:predict TF Serving REST predict
  GET  /v1/models/{name}                      TF Serving model status
  GET  /v1/models/{name}/versions/{v}
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import pathlib
import re
import sqlite3
import threading
import time

import numpy as np

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from edgecnn import cloud_model
from edgecnn import evaluate as eval_lib
from edgecnn import models
from edgecnn import serving

logger = logging.getLogger("edgecnn.cloud")
EDGE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_LABEL_OBJECTS = 4096


@dataclasses.dataclass
class CloudRuntime:
  """CloudCNN and everything the cloud service keeps.

  Args:
    cloud_dir: a directory written by cloud_model.train_cloud.
    workdir: where the label database and the token live.
    token: bearer token; generated and stored in workdir/token if None.
    model_name: the name CloudCNN is served under.
    label_mode: crop protocol of labelling ("ten_crop" or "center").
  """
  cloud_dir: pathlib.Path
  workdir: pathlib.Path
  token: str | None = None
  model_name: str = "cloud_cnn"
  label_mode: str = "ten_crop"

  def __post_init__(self):
    self.cloud_dir = pathlib.Path(self.cloud_dir)
    self.workdir = pathlib.Path(self.workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.token = serving.load_or_create_token(self.workdir / "token", self.token)
    self.model = cloud_model.load_cloud(self.cloud_dir)
    self.info = cloud_model.load_dataset_info(self.cloud_dir)
    self.model_hash = models.model_hash(self.model)
    self.crop = self.model.input_shape[1]
    self.slot = serving.ModelSlot()
    self.slot.swap(self.model, 1)
    self._payloads: dict[int, bytes] = {}
    self._lock = threading.Lock()
    self._db = sqlite3.connect(self.workdir / "labels.sqlite",
                               check_same_thread=False, isolation_level=None)
    self._db.execute("PRAGMA journal_mode=WAL")
    self._db.execute("CREATE TABLE IF NOT EXISTS labels (edge TEXT, id TEXT, "
                     "label INTEGER, probs TEXT, created REAL, "
                     "PRIMARY KEY (edge, id))")
    self.stats = {"labelled": 0, "label_cache_hits": 0, "payloads_served": 0,
                  "predictions": 0}

  def payload(self, m: int) -> bytes:
    models._check_num_shared(m)
    with self._lock:
      if m not in self._payloads:
        path = cloud_model.payload_path(self.cloud_dir, m)
        data = path.read_bytes() if path.is_file() else \
            models.export_shared_layers(self.model, m)
        manifest, _ = models.read_payload(data)
        if manifest["cloud_model_hash"] != self.model_hash:
          raise RuntimeError(f"{path} was made from another cloud model "
                             f"({manifest['cloud_model_hash'][:12]}); "
                             "regenerate the payloads.")
        self._payloads[m] = data
      return self._payloads[m]

  def label(self, edge: str, objects: list[tuple[str, np.ndarray]]) -> list[dict]:
    """Labels objects with CloudCNN; a known (edge, id) gets its stored label."""
    ids = [i for i, _ in objects]
    with self._lock:
      rows = self._db.execute(
          f"SELECT id, label, probs FROM labels WHERE edge=? AND id IN "
          f"({','.join('?' * len(ids))})", [edge, *ids]).fetchall() if ids else []
    known = {r[0]: (r[1], json.loads(r[2])) for r in rows}
    todo = [(i, t) for i, t in objects if i not in known]
    if todo:
      probs = eval_lib.predict_probs(self.model, np.stack([t for _, t in todo]),
                                     crop_size=self.crop, mode=self.label_mode,
                                     flip=self.info.flip)
      now = time.time()
      fresh = {i: (int(p.argmax()), [float(v) for v in p])
               for (i, _), p in zip(todo, probs)}
      with self._lock:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "INSERT OR IGNORE INTO labels VALUES (?, ?, ?, ?, ?)",
            [(edge, i, l, json.dumps(p), now) for i, (l, p) in fresh.items()])
        self._db.execute("COMMIT")
      known.update(fresh)
    self.stats["labelled"] += len(todo)
    self.stats["label_cache_hits"] += len(objects) - len(todo)
    return [{"id": i, "label": known[i][0], "probabilities": known[i][1]}
            for i in ids]


def _check_edge(edge) -> str:
  if not isinstance(edge, str) or not EDGE_ID.match(edge):
    raise serving.RequestError(
        f"Edge id must match {EDGE_ID.pattern}; got {edge!r}.")
  return edge


def parse_label_body(body, image_shape) -> tuple[str, list[tuple[str, np.ndarray]]]:
  """Validates a /v1/label body; returns (edge, [(id, uint8 tensor)])."""
  from edgecnn.edge.store import OBJECT_ID
  if not isinstance(body, dict):
    raise serving.RequestError("Body must be a JSON object with 'edge' and "
                               "'objects'.")
  edge = _check_edge(body.get("edge"))
  objects = body.get("objects")
  if not isinstance(objects, list) or not objects:
    raise serving.RequestError("'objects' must be a non-empty list of "
                               "{\"id\": <32 hex>, \"b64\": <uint8 bytes>}.")
  if len(objects) > MAX_LABEL_OBJECTS:
    raise serving.RequestError(f"{len(objects)} objects exceed the limit of "
                               f"{MAX_LABEL_OBJECTS} per request.", 413)
  size = int(np.prod(image_shape))
  out, seen = [], set()
  for k, obj in enumerate(objects):
    if not isinstance(obj, dict) or set(obj) != {"id", "b64"}:
      raise serving.RequestError(f"objects[{k}] must be {{\"id\", \"b64\"}}.")
    object_id = obj["id"]
    if not isinstance(object_id, str) or not OBJECT_ID.match(object_id):
      raise serving.RequestError(f"objects[{k}].id must be 32 lowercase hex "
                                 f"digits; got {str(object_id)[:80]!r}.")
    if object_id in seen:
      raise serving.RequestError(f"objects[{k}].id {object_id} is repeated.")
    seen.add(object_id)
    try:
      raw = base64.b64decode(obj["b64"], validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
      raise serving.RequestError(f"objects[{k}].b64 is not base64 ({e}).")
    if len(raw) != size:
      raise serving.RequestError(
          f"objects[{k}] has {len(raw)} bytes; a pre-processed object is "
          f"{size} bytes (uint8 {list(image_shape)}).")
    out.append((object_id, np.frombuffer(raw, np.uint8).reshape(image_shape)))
  return edge, out


def create_app(runtime: CloudRuntime):
  """The FastAPI application of the cloud service."""

  app = FastAPI(title="edgecnn cloud", version="1",
                description="CloudCNN: shared layers, labels, predictions.")

  serving.install_error_handlers(app)

  def unauthorized():
    return JSONResponse({"error": "Missing or wrong bearer token; send "
                                  "'Authorization: Bearer <token>'."},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})

  def authorized(request: Request) -> bool:
    return serving.token_matches(request.headers.get("authorization"),
                                 runtime.token)

  async def json_body(request: Request):
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
      raise serving.RequestError(f"Body of {len(raw)} bytes exceeds "
                                 f"{MAX_BODY_BYTES}.", 413)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
      raw = serving.gunzip_limited(raw, MAX_BODY_BYTES)
    elif encoding != "identity":
      raise serving.RequestError(f"Content-Encoding {encoding!r} is not "
                                 "supported; send gzip or identity.", 415)
    ctype = request.headers.get("content-type", "application/json")
    if "json" not in ctype:
      raise serving.RequestError(f"Content-Type {ctype!r} is not supported; "
                                 "send application/json.", 415)
    return serving.parse_json(raw)

  def check_model(name: str, version: str | None = None):
    if name != runtime.model_name or version not in (None, "1"):
      label = f"{name}" + (f" version {version}" if version else "")
      return JSONResponse({"error": f"Servable not found for request: {label}; "
                                    f"this server serves {runtime.model_name!r}"
                                    " version 1."}, status_code=404)
    return None

  @app.get("/healthz")
  def healthz():
    return {"status": "ok", "model_hash": runtime.model_hash}

  @app.get("/v1/shared_layers/{m}")
  def shared_layers(m: int, request: Request, edge: str = "unknown"):
    if not authorized(request):
      return unauthorized()
    _check_edge(edge)
    try:
      data = runtime.payload(m)
    except ValueError as e:
      raise serving.RequestError(str(e)) from e
    runtime.stats["payloads_served"] += 1
    logger.info("shared layers m=%d (%d bytes) to edge %s", m, len(data), edge)
    return Response(data, media_type="application/octet-stream", headers={
        "X-Cloud-Model-Hash": runtime.model_hash,
        "X-Payload-SHA256": models.payload_digest(data)})

  @app.post("/v1/label", openapi_extra=serving.LABEL_BODY)
  async def label(request: Request):
    if not authorized(request):
      return unauthorized()
    edge, objects = parse_label_body(await json_body(request),
                                     runtime.info.image_shape)
    labels = runtime.label(edge, objects)
    logger.info("labelled %d objects for edge %s", len(labels), edge)
    return {"labels": labels, "model_hash": runtime.model_hash}

  @app.post("/v1/models/{name}:predict", openapi_extra=serving.PREDICT_BODY)
  async def predict(name: str, request: Request):
    return await predict_with(name, None, request)

  @app.post("/v1/models/{name}/versions/{version}:predict",
            openapi_extra=serving.PREDICT_BODY)
  async def predict_version(name: str, version: str, request: Request):
    return await predict_with(name, version, request)

  async def predict_with(name: str, version: str | None, request: Request):
    if not authorized(request):
      return unauthorized()
    if (missing := check_model(name, version)) is not None:
      return missing
    body = await json_body(request)
    served = runtime.slot.current()

    def work():  # parsing and CloudCNN's forward pass off the event loop
      x = serving.parse_predict_body(body,
                                     input_shape=runtime.model.input_shape[1:],
                                     image_shape=runtime.info.image_shape)
      return served.predict(x)

    from fastapi.concurrency import run_in_threadpool
    probs = await run_in_threadpool(work)
    runtime.stats["predictions"] += len(probs)
    return serving.predictions_response(probs)

  @app.post("/v1/classify", openapi_extra=serving.IMAGE_BODY)
  async def classify(request: Request):
    """A phone's raw JPEG/PNG body classified by CloudCNN (the "cloud
    inference" scheme of Sec. 4.2), with server-side timing headers."""
    if not authorized(request):
      return unauthorized()
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in ("image/jpeg", "image/png", "application/octet-stream"):
      raise serving.RequestError(f"Content-Type {ctype or 'missing'!r} is not "
                                 "supported; send image/jpeg or image/png.", 415)
    raw = await request.body()
    received = time.monotonic()
    if len(raw) > serving.MAX_IMAGE_BYTES:
      raise serving.RequestError(f"Image of {len(raw)} bytes exceeds "
                                 f"{serving.MAX_IMAGE_BYTES}.", 413)

    def work():
      tensor = serving.prepare_image(raw, runtime.info.image_shape)
      x = serving.model_input(tensor[None], runtime.crop)
      start = time.perf_counter()
      probs = runtime.slot.current().predict(x)[0]
      return probs, time.perf_counter() - start

    from fastapi.concurrency import run_in_threadpool
    probs, inference_s = await run_in_threadpool(work)
    cls = int(probs.argmax())
    return JSONResponse(
        {"class": cls, "class_name": runtime.info.class_names[cls],
         "probabilities": [float(p) for p in probs], "model_version": 1},
        headers=serving.timing_headers(received, inference_s,
                                       time.monotonic() - received))

  @app.get("/v1/models/{name}")
  def status(name: str, request: Request):
    if not authorized(request):
      return unauthorized()
    if (missing := check_model(name)) is not None:
      return missing
    return serving.model_status([(1, "AVAILABLE")])

  @app.get("/v1/models/{name}/versions/{version}")
  def version_status(name: str, version: str, request: Request):
    if not authorized(request):
      return unauthorized()
    if (missing := check_model(name, version)) is not None:
      return missing
    return serving.model_status([(1, "AVAILABLE")])

  @app.get("/v1/stats")
  def stats(request: Request):
    if not authorized(request):
      return unauthorized()
    return {"model_hash": runtime.model_hash, **runtime.stats}

  return app

"""The edge service's HTTP API over an EdgeRuntime.

  GET  /healthz
  POST /v1/classify                       raw JPEG/PNG body from a phone:
       stored durably, then answered with class, probabilities, model version
       and object id
  POST /v1/models/edgecnn:predict         TF Serving REST predict
  POST /v1/models/edgecnn/versions/{v}:predict   the same, by version (only
                                          the version being served answers)
  GET  /v1/models/edgecnn                 TF Serving model status
  GET  /v1/models/edgecnn/versions/{v}
  GET  /v1/status                         store counts, versions, traffic
  GET  /v1/objects/{id}                   one object's state
  POST /v1/admin/upload                   force an upload batch (token)
  POST /v1/admin/retrain                  force a retrain (token)
  POST /v1/admin/compact                  delete objects already used by a
                                          deployed version (token)
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from edgecnn import serving
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import store as store_lib

MAX_UPLOAD_BYTES = serving.MAX_IMAGE_BYTES
MAX_JSON_BYTES = 16 * 1024 * 1024
# Predict bodies up to this size are parsed on the event loop.
INLINE_PARSE_BYTES = 64 * 1024
IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")


def parse_predict(edge: runtime_lib.EdgeRuntime, raw: bytes, npy: bool):
  """A predict body (``.npy`` or TF Serving JSON) as the model's input."""
  input_shape = (edge.crop, edge.crop, edge.info.image_shape[2])
  if npy:
    return serving.parse_npy_body(raw, input_shape=input_shape)
  return serving.parse_predict_body(serving.parse_json(raw),
                                    input_shape=input_shape,
                                    image_shape=edge.info.image_shape)


def parses_inline(raw: bytes, npy: bool) -> bool:
  """Whether a body is cheap enough to parse on the event loop: a phone's
  few instances parse faster than a hop to a worker thread; big bodies (and
  b64 images to decode) must not block the loop."""
  return npy or (len(raw) <= INLINE_PARSE_BYTES and b'"b64"' not in raw)


class FastPredict:
  """A pure-ASGI fast path for the happy case of the unversioned predict.

  Measured on two cores (docs/reliability.md), a one-instance request spent
  most of its CPU outside the model: in FastAPI's routing, request object
  and response classes. This middleware answers a well-formed predict body
  (``.npy``, or JSON up to INLINE_PARSE_BYTES without ``b64`` images)
  straight from the ASGI messages. Everything else (any error, a missing or
  large Content-Length, an edge still initialising) goes to the FastAPI
  route with the body replayed, so every answer but the 200 comes from the
  one place that defines it, and a 200 here is byte-for-byte the route's.
  """

  PATH = f"/v1/models/{runtime_lib.MODEL_NAME}:predict"

  def __init__(self, app, edge: runtime_lib.EdgeRuntime):
    self.app, self.edge = app, edge

  async def __call__(self, scope, receive, send):
    if (scope["type"] != "http" or scope["path"] != self.PATH
        or scope["method"] != "POST"):
      return await self.app(scope, receive, send)
    ctype, length = b"application/json", None
    for key, value in scope["headers"]:
      if key == b"content-type":
        ctype = value
      elif key == b"content-length":
        length = value
    npy = ctype.startswith(serving.NPY_CONTENT_TYPE.encode())
    limit = MAX_JSON_BYTES if npy else INLINE_PARSE_BYTES
    if (not (npy or b"json" in ctype) or length is None or not length.isdigit()
        or int(length) > limit or self.edge.slot.current() is None):
      return await self.app(scope, receive, send)
    chunks, size, message = [], 0, {"more_body": True}
    while message.get("more_body", False):
      message = await receive()
      if message["type"] != "http.request":  # the client went away
        return
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > limit:
        break
    raw = b"".join(chunks)
    try:
      if size > limit or not parses_inline(raw, npy):
        raise serving.RequestError("not for the fast path")
      x = parse_predict(self.edge, raw, npy)
      probs, _ = await self.edge.predict_async(x)
      body = serving.predictions_body(probs)
    except Exception:  # the route answers it, errors included
      return await self.app(scope, _replay(raw, message, receive), send)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _replay(raw: bytes, last: dict, receive):
  """An ASGI receive that yields the body already read, then the rest."""
  pending = [{"type": "http.request", "body": raw,
              "more_body": last.get("more_body", False)}]

  async def replay():
    return pending.pop() if pending else await receive()
  return replay


def create_app(edge: runtime_lib.EdgeRuntime, *, fast_predict: bool = True):
  """The FastAPI application of an edge service.

  Args:
    edge: the runtime it serves.
    fast_predict: answer well-formed predict bodies in a pure-ASGI fast
      path (FastPredict); off, every request goes through FastAPI.
  """

  app = FastAPI(title=f"edgecnn edge {edge.config.edge_id}", version="1",
                description="EdgeCNN serving, uploads and Alg. 2 updates.")
  name = runtime_lib.MODEL_NAME

  serving.install_error_handlers(app)

  def unauthorized():
    return JSONResponse({"error": "Admin endpoints need 'Authorization: "
                                  "Bearer <token>' (the edge's token file)."},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})

  async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
      raise serving.RequestError(f"Body of {declared} bytes exceeds the limit "
                                 f"of {limit} bytes.", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size > limit:
        raise serving.RequestError(f"Body exceeds the limit of {limit} bytes.",
                                   413)
      chunks.append(chunk)
    return b"".join(chunks)

  def check_model(model: str, version: str | None = None):
    served = edge.slot.current()
    # The deployed set is cached by the runtime; no per-request set building.
    if model != name or (version is not None and not (
        version.isascii() and version.isdigit()
        and int(version) in edge.deployed_versions())):
      label = model + (f" version {version}" if version else "")
      return JSONResponse({"error": f"Servable not found for request: {label};"
                                    f" this edge serves {name!r} versions "
                                    f"{sorted(edge.deployed_versions())}."},
                          404)
    if served is None:
      return JSONResponse({"error": "The edge is still initialising."}, 503)
    return None

  @app.get("/healthz")
  def healthz():
    served = edge.slot.current()
    return {"status": "ok" if served else "initialising",
            "serving_version": served.version if served else None}

  @app.post("/v1/classify", openapi_extra=serving.IMAGE_BODY)
  async def classify(request: Request):
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in IMAGE_TYPES:
      raise serving.RequestError(f"Content-Type {ctype or 'missing'!r} is not "
                                 f"supported; send one of {list(IMAGE_TYPES)} "
                                 "with the raw image bytes.", 415)
    raw = await read_body(request, MAX_UPLOAD_BYTES)
    received = time.monotonic()
    timings: dict = {}
    answer = await run_in_threadpool(edge.classify_upload, raw, timings)
    return JSONResponse(answer, headers=serving.timing_headers(
        received, timings["inference_s"], time.monotonic() - received))

  @app.post("/v1/models/{model}:predict", openapi_extra=serving.PREDICT_BODY)
  async def predict(model: str, request: Request):
    if (missing := check_model(model)) is not None:
      return missing
    return await predict_with(request, None)

  @app.post("/v1/models/{model}/versions/{version}:predict",
            openapi_extra=serving.PREDICT_BODY)
  async def predict_version(model: str, version: str, request: Request):
    if (missing := check_model(model, version)) is not None:
      return missing
    if (gone := not_loaded(int(version))) is not None:
      return gone
    return await predict_with(request, int(version))

  def not_loaded(version: int, served_version: int | None = None):
    """404 for a deployed version that is no longer in memory: like TF
    Serving's default 'latest' policy, an edge keeps only its newest."""
    if served_version is None:
      served_version = edge.slot.current().version
    if version == served_version:
      return None
    return JSONResponse({"error": f"Servable not found for request: {name} "
                                  f"version {version} is no longer loaded; "
                                  f"this edge serves version {served_version} "
                                  f"(POST /v1/models/{name}:predict or "
                                  f"/v1/models/{name}/versions/"
                                  f"{served_version}:predict)."}, 404)

  async def predict_with(request: Request, version: int | None):
    ctype = request.headers.get("content-type", "application/json")
    npy = ctype.startswith(serving.NPY_CONTENT_TYPE)
    if not npy and "json" not in ctype:
      raise serving.RequestError(
          f"Content-Type {ctype!r} is not supported; send application/json "
          f"(TF Serving's body) or {serving.NPY_CONTENT_TYPE} (numpy.save).",
          415)
    raw = await read_body(request, MAX_JSON_BYTES)
    x = (parse_predict(edge, raw, npy) if parses_inline(raw, npy)
         else await run_in_threadpool(parse_predict, edge, raw, npy))
    probs, served_version = await edge.predict_async(x)
    if version is not None and (
        gone := not_loaded(version, served_version)) is not None:
      return gone  # swapped while this request waited for its batch
    return serving.predictions_response(probs)

  @app.get("/v1/models/{model}")
  def model_status(model: str):
    if (missing := check_model(model)) is not None:
      return missing
    served = edge.slot.current()
    return serving.model_status([(served.version, "AVAILABLE")])

  @app.get("/v1/models/{model}/versions/{version}")
  def version_status(model: str, version: str):
    if (missing := check_model(model, version)) is not None:
      return missing
    served = edge.slot.current()
    state = "AVAILABLE" if str(served.version) == version else "END"
    return serving.model_status([(int(version), state)])

  @app.get("/v1/status")
  def status():
    return edge.status()

  @app.get("/v1/objects/{object_id}")
  def object_state(object_id: str):
    if not store_lib.OBJECT_ID.match(object_id):
      raise serving.RequestError("Object ids are 32 lowercase hex digits; got "
                                 f"{object_id[:80]!r}.")
    state = edge.store.object_state(object_id)
    if state is None:
      return JSONResponse({"error": f"No object {object_id}."}, 404)
    return {"id": object_id, **state}

  @app.post("/v1/admin/upload")
  async def admin_upload(request: Request):
    if not serving.token_matches(request.headers.get("authorization"),
                                 edge.admin_token):
      return unauthorized()
    return await run_in_threadpool(edge.upload_once, True)

  @app.post("/v1/admin/retrain")
  async def admin_retrain(request: Request):
    if not serving.token_matches(request.headers.get("authorization"),
                                 edge.admin_token):
      return unauthorized()
    return await run_in_threadpool(edge.retrain)

  @app.post("/v1/admin/compact")
  async def admin_compact(request: Request):
    if not serving.token_matches(request.headers.get("authorization"),
                                 edge.admin_token):
      return unauthorized()
    return {"deleted": await run_in_threadpool(edge.store.compact_used)}

  # The hot path first: Starlette tries the routes in order.
  hot = [r for r in app.router.routes
         if getattr(r, "path", None) == "/v1/models/{model}:predict"]
  app.router.routes[:] = hot + [r for r in app.router.routes if r not in hot]
  if fast_predict:
    app.add_middleware(FastPredict, edge=edge)
  return app

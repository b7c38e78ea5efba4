"""What the cloud and edge services share: request parsing in TensorFlow
Serving's REST format, image decoding, bearer tokens, a model slot that can be
hot-swapped, and JSON errors.

TF Serving's predict API takes ``{"instances": [...]}`` (row format) or
``{"inputs": ...}`` (columnar) and answers ``{"predictions": [...]}``; binary
values are ``{"b64": "<base64>"}``. Here an instance is either a nested list
shaped like the model input (float32 in [0, 1], as produced by
data.preprocess and a centre crop), or ``{"b64": ...}`` holding an encoded
JPEG/PNG image, which is decoded and pre-processed by ``prepare_image`` and
``model_input``, the same functions that evaluation uses.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import dataclasses
import hmac
import io
import json
import os
import pathlib
import re
import secrets
import threading
from typing import Any, Callable, Sequence

import numpy as np

from edgecnn import data as data_lib

try:  # several times faster than json on TF Serving's nested-list bodies
  import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency
  _orjson = None

MAX_INSTANCES = 1024
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # refuse before decoding above this


class RequestError(ValueError):
  """A client error; ``status`` is the HTTP status to answer with."""

  def __init__(self, message: str, status: int = 400):
    super().__init__(message)
    self.status = status


# --- tokens --------------------------------------------------------------------

def load_or_create_token(path: str | os.PathLike, token: str | None = None) -> str:
  """Returns ``token`` if given, else the one stored at ``path``, creating a
  random one (owner-only permissions) on first start."""
  if token:
    return token
  path = pathlib.Path(path)
  if path.exists():
    stored = path.read_text().strip()
    if stored:
      return stored
  path.parent.mkdir(parents=True, exist_ok=True)
  new = secrets.token_urlsafe(32)
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, "w") as f:
    f.write(new + "\n")
  os.chmod(path, 0o600)
  return new


def token_matches(header: str | None, token: str) -> bool:
  """Constant-time check of an ``Authorization: Bearer <token>`` header."""
  if not header or not header.startswith("Bearer "):
    return False
  return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())


def gunzip_limited(raw: bytes, limit: int) -> bytes:
  """Decompresses a gzip body, refusing (413) more than ``limit`` bytes of
  output so that a small bomb cannot exhaust memory."""
  import zlib
  d = zlib.decompressobj(wbits=31)
  try:
    out = d.decompress(raw, limit + 1)
  except zlib.error as e:
    raise RequestError(f"Body is not valid gzip ({e}).") from e
  if len(out) > limit or d.unconsumed_tail:
    raise RequestError(f"Gzip body expands beyond {limit} bytes.", 413)
  if not d.eof:
    raise RequestError("Gzip body is truncated.")
  return out


# --- images ----------------------------------------------------------------------

def prepare_image(raw: bytes, image_shape: Sequence[int]) -> np.ndarray:
  """Decodes a JPEG/PNG upload into the dataset's image format.

  The edge's pre-processing step (Alg. 2): decode, convert to the colour mode
  the model expects (greyscale or RGB), resize to the dataset's image size.
  The header is read first and an image claiming more than MAX_IMAGE_PIXELS
  is refused before any pixel is decoded.

  Args:
    raw: the encoded image.
    image_shape: (H, W, C) of the dataset, C in {1, 3}.

  Returns:
    uint8 (H, W, C), the "object" the edge stores and uploads.

  Raises:
    RequestError: for empty, oversized, truncated or non-image bytes.
  """
  from PIL import Image, UnidentifiedImageError
  if not raw:
    raise RequestError("Empty image body; send JPEG or PNG bytes.")
  if len(raw) > MAX_IMAGE_BYTES:
    raise RequestError(f"Image of {len(raw)} bytes exceeds the limit of "
                       f"{MAX_IMAGE_BYTES} bytes.", status=413)
  try:
    with Image.open(io.BytesIO(raw)) as img:
      if img.format not in ("JPEG", "PNG"):
        raise RequestError(f"Unsupported image format {img.format}; send "
                           "JPEG or PNG.", status=415)
      w, h = img.size
      if w * h > MAX_IMAGE_PIXELS:
        raise RequestError(f"Image header claims {w}x{h} pixels, more than "
                           f"the limit of {MAX_IMAGE_PIXELS}; refused before "
                           "decoding.", status=413)
      img.load()
      mode = "L" if image_shape[2] == 1 else "RGB"
      img = img.convert(mode).resize((image_shape[1], image_shape[0]),
                                     Image.BILINEAR)
      array = np.asarray(img, np.uint8)
  except RequestError:
    raise
  except Image.DecompressionBombError as e:
    raise RequestError(f"Image header claims too many pixels ({e}); refused "
                       "before decoding.", status=413) from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise RequestError(f"Could not decode the image ({type(e).__name__}: "
                       f"{e}); send a complete JPEG or PNG file.") from e
  return array.reshape(image_shape)


def encode_png(image: np.ndarray) -> bytes:
  """uint8 (H, W, C) -> PNG bytes (for clients and tests)."""
  from PIL import Image
  squeezed = image[..., 0] if image.shape[-1] == 1 else image
  buf = io.BytesIO()
  Image.fromarray(np.asarray(squeezed, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def model_input(images_uint8: np.ndarray, crop_size: int) -> np.ndarray:
  """uint8 objects (N, H, W, C) -> the model's float input (centre crop)."""
  return data_lib.center_crop(data_lib.preprocess(images_uint8),
                              crop_size).numpy()


# --- TF Serving request bodies ------------------------------------------------------

def _decode_b64(value: Any, where: str) -> bytes:
  if not isinstance(value, str):
    raise RequestError(f"{where}: 'b64' must be a base64 string; got "
                       f"{type(value).__name__}.")
  try:
    return base64.b64decode(value, validate=True)
  except (binascii.Error, ValueError) as e:
    raise RequestError(f"{where}: invalid base64 ({e}).") from e


def _check_count(n: int, empty_message: str) -> None:
  """The instance-count rules every predict body shares: at least one, at
  most MAX_INSTANCES (413 beyond, like an oversized body)."""
  if not n:
    raise RequestError(f"{empty_message}; send at least one instance.")
  if n > MAX_INSTANCES:
    raise RequestError(f"{n} instances exceed the limit of {MAX_INSTANCES} "
                       "per request.", status=413)


def parse_predict_body(body: Any, *, input_shape: Sequence[int],
                       image_shape: Sequence[int]) -> np.ndarray:
  """Turns a TF Serving predict body into a float32 model-input batch.

  Args:
    body: the parsed JSON.
    input_shape: the model's (crop, crop, C).
    image_shape: the dataset's (H, W, C), for b64 images.

  Returns:
    float32 (N, *input_shape).

  Raises:
    RequestError: naming what was wrong and what would work.
  """
  if not isinstance(body, dict):
    raise RequestError("Request body must be a JSON object with 'instances' "
                       f"(or 'inputs'); got {type(body).__name__}.")
  if ("instances" in body) == ("inputs" in body):
    raise RequestError("Request body needs exactly one of 'instances' or "
                       f"'inputs'; got keys {sorted(body)}.")
  instances = body.get("instances", body.get("inputs"))
  if isinstance(instances, dict) and "b64" in instances:
    instances = [instances]
  if not isinstance(instances, list):
    raise RequestError("'instances' must be a list; got "
                       f"{type(instances).__name__}.")
  _check_count(len(instances), "'instances' is empty")
  shape = tuple(input_shape)
  out = np.empty((len(instances), *shape), np.float32)
  for i, inst in enumerate(instances):
    where = f"instances[{i}]"
    if isinstance(inst, dict):
      if set(inst) != {"b64"}:
        raise RequestError(f"{where}: an object instance must be "
                           f"{{\"b64\": ...}}; got keys {sorted(inst)}.")
      image = prepare_image(_decode_b64(inst["b64"], where), image_shape)
      out[i] = model_input(image[None], shape[0])[0]
      continue
    try:
      array = np.asarray(inst, dtype=np.float64)
    except (ValueError, TypeError) as e:
      raise RequestError(f"{where}: not a numeric nested list of shape "
                         f"{list(shape)} ({e}).") from e
    if array.shape == shape[:2] and shape[2] == 1:
      array = array[..., None]
    if array.shape != shape:
      raise RequestError(f"{where}: shape {list(array.shape)}; the model "
                         f"expects {list(shape)} (float32 in [0, 1]) or "
                         "{\"b64\": <JPEG/PNG>}.")
    if not np.all(np.isfinite(array)):
      raise RequestError(f"{where}: contains NaN or infinity.")
    out[i] = array
  return out


def timing_headers(body_received_at: float, inference_s: float,
                   server_s: float) -> dict[str, str]:
  """Server-side timings a mobile client turns into upload, inference and
  download times. Timestamps are time.monotonic(), which is one clock for
  every process (and network namespace) on a machine."""
  import time
  return {"X-Body-Received-At": f"{body_received_at:.6f}",
          "X-Inference-Ms": f"{1000 * inference_s:.3f}",
          "X-Server-Ms": f"{1000 * server_s:.3f}",
          "X-Sent-At": f"{time.monotonic():.6f}"}


def model_status(versions: Sequence[tuple[int, str]]) -> dict:
  """TF Serving's GetModelStatus JSON for (version, state) pairs."""
  return {"model_version_status": [
      {"version": str(v), "state": state,
       "status": {"error_code": "OK", "error_message": ""}}
      for v, state in versions]}


# --- a hot-swappable served model ----------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Served:
  """A model being served and the facts clients see about it."""
  version: int
  model: Any
  predict: Callable[[np.ndarray], np.ndarray]


class ModelSlot:
  """Holds the served model; ``swap`` replaces it atomically.

  Requests take a reference with ``current()`` and use it to the end, so a
  swap in the middle of a request never mixes two versions.
  """

  def __init__(self):
    self._served: Served | None = None
    self._lock = threading.Lock()

  def current(self) -> Served | None:
    with self._lock:
      return self._served

  def swap(self, model, version: int) -> Served:
    import tensorflow as tf
    forward = tf.function(lambda x: model(x, training=False),
                          reduce_retracing=True)

    def predict(x: np.ndarray, batch: int = 256) -> np.ndarray:
      return np.concatenate([forward(tf.constant(x[i:i + batch])).numpy()
                             for i in range(0, len(x), batch)])

    predict(np.zeros((1, *model.input_shape[1:]), np.float32))  # trace once
    served = Served(version, model, predict)
    with self._lock:
      self._served = served
    return served


class BackgroundServer:
  """Runs an ASGI app with uvicorn in a background thread (tests, main job).

  Args:
    app: the ASGI application.
    host: interface to bind.
    port: port to bind; 0 picks a free one (see ``url`` after ``start``).
    ssl_certfile, ssl_keyfile: optional TLS certificate and key.
  """

  def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *,
               ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
               log_level: str = "warning"):
    import socket
    import uvicorn
    self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self._sock.bind((host, port))
    self.host, self.port = self._sock.getsockname()[:2]
    scheme = "https" if ssl_certfile else "http"
    self.url = f"{scheme}://{self.host}:{self.port}"
    self.server = uvicorn.Server(uvicorn.Config(
        app, log_level=log_level, ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5))
    self._thread: threading.Thread | None = None

  def start(self, timeout: float = 30.0) -> "BackgroundServer":
    import time
    self._thread = threading.Thread(
        target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
    self._thread.start()
    deadline = time.monotonic() + timeout
    while not self.server.started:
      if time.monotonic() > deadline or not self._thread.is_alive():
        raise RuntimeError(f"Server on {self.url} did not start.")
      time.sleep(0.02)
    return self

  def stop(self) -> None:
    self.server.should_exit = True
    if self._thread:
      self._thread.join(timeout=15)
    self._sock.close()


def run_until_signal(app, *, host: str, port: int,
                     ssl_certfile: str | None = None,
                     ssl_keyfile: str | None = None) -> None:
  """Serves ``app`` in the foreground until SIGTERM or SIGINT, then returns.

  uvicorn shuts down gracefully on those signals and then re-raises them to
  the handlers that were installed before it started; no-op handlers here
  turn that into a normal return, so callers can clean up and exit 0.
  """
  import signal
  import uvicorn
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: None)
  uvicorn.run(app, host=host, port=port, ssl_certfile=ssl_certfile,
              ssl_keyfile=ssl_keyfile, log_level="info")


NPY_CONTENT_TYPE = "application/x-npy"


_NPY_HEADER = re.compile(rb"\{'descr': '(<f4|<f8)', 'fortran_order': False, "
                         rb"'shape': \(([0-9, ]*)\), \}")


def _read_npy_fast(raw: bytes) -> np.ndarray | None:
  """numpy.save's own little-endian float header, read without np.load's
  literal_eval; None for anything else (np.load then reads or refuses it)."""
  if raw[:8] != b"\x93NUMPY\x01\x00" or len(raw) < 10:
    return None
  end = 10 + int.from_bytes(raw[8:10], "little")
  match = _NPY_HEADER.match(raw, 10, end)
  if match is None:
    return None
  shape = tuple(int(v) for v in match.group(2).split(b",") if v.strip())
  dtype = np.dtype(match.group(1).decode())
  if len(raw) - end != int(np.prod(shape)) * dtype.itemsize:
    return None
  return np.frombuffer(raw, dtype, offset=end).reshape(shape)


def parse_npy_body(raw: bytes, *, input_shape: Sequence[int]) -> np.ndarray:
  """A binary predict body: one ``.npy`` array (numpy.save format) of shape
  (N, *input_shape), float32 or float64 in [0, 1].

  An extension beside TF Serving's JSON, like Triton's binary tensor data:
  no text to parse, so a server on few cores spends its time in the model.
  Pickled object arrays are refused (``allow_pickle=False``).

  Raises:
    RequestError: naming what was wrong and what would work.
  """
  array = _read_npy_fast(raw)
  try:
    if array is None:
      if not raw.startswith(b"\x93NUMPY"):
        raise ValueError("no .npy magic string")
      array = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise RequestError(f"Body is not a .npy array ({e}); send numpy.save() "
                       f"output of shape [N, {', '.join(map(str, input_shape))}]"
                       " float32, or JSON.") from e
  shape = tuple(input_shape)
  if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
    raise RequestError(f".npy dtype {array.dtype}; send float32 (or float64).")
  if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
    raise RequestError(f".npy shape {list(array.shape)}; the model expects "
                       f"[N, {', '.join(map(str, shape))}].")
  _check_count(len(array), "The .npy array holds no instance")
  array = array.astype(np.float32, copy=False)
  if not np.isfinite(array).all():
    raise RequestError("The .npy array contains NaN or infinity.")
  return array


def parse_json(raw: bytes) -> Any:
  """A request body's JSON.

  orjson parses when installed; what it refuses goes to the standard library
  too, which also reads the NaN/Infinity literals some clients send (they
  then get their own clear error from parse_predict_body).

  Raises:
    RequestError: the body is not JSON.
  """
  if _orjson is not None:
    try:
      return _orjson.loads(raw)
    except _orjson.JSONDecodeError:
      pass
  try:
    return json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(f"Malformed JSON: {e}.") from e


def predictions_body(probs: np.ndarray) -> bytes:
  """``{"predictions": probs}`` as JSON bytes, encoded without building
  Python lists (orjson serialises float32 arrays directly)."""
  if _orjson is not None:
    return _orjson.dumps({"predictions": np.ascontiguousarray(probs)},
                         option=_orjson.OPT_SERIALIZE_NUMPY)
  return json.dumps({"predictions": probs.tolist()}).encode()  # pragma: no cover


def predictions_response(probs: np.ndarray, headers: dict | None = None):
  """predictions_body as an HTTP response."""
  from starlette.responses import Response
  return Response(predictions_body(probs), media_type="application/json",
                  headers=headers)


def install_error_handlers(app) -> None:
  """Every error a service returns is JSON {"error": "..."} (TF Serving's
  shape), including unknown routes (404), wrong methods (405) and
  parameters of the wrong type (400), and no exception escapes as a bare 500."""
  from fastapi.exceptions import RequestValidationError
  from fastapi.responses import JSONResponse
  from starlette.exceptions import HTTPException

  @app.exception_handler(RequestError)
  async def _request_error(_, exc: RequestError):
    return JSONResponse({"error": str(exc)}, status_code=exc.status)

  @app.exception_handler(HTTPException)
  async def _http_error(request, exc: HTTPException):
    message = {404: f"No such endpoint: {request.method} {request.url.path}.",
               405: f"{request.method} is not allowed on {request.url.path}."
               }.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))

  @app.exception_handler(RequestValidationError)
  async def _validation_error(_, exc: RequestValidationError):
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
             for e in exc.errors()]
    return JSONResponse({"error": "Invalid request: " + "; ".join(parts)},
                        status_code=400)

  @app.exception_handler(Exception)
  async def _unexpected(_, exc: Exception):
    import logging
    logging.getLogger("edgecnn").exception("unexpected error")
    return JSONResponse({"error": f"Internal error: {type(exc).__name__}."},
                        status_code=500)


# OpenAPI descriptions of the raw bodies the endpoints read themselves, so the
# schema (and fuzzers driven by it) know what to send.
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "instances": {"type": "array", "items": {}},
        "inputs": {}}}},
    NPY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
LABEL_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "edge": {"type": "string"},
        "objects": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string"}, "b64": {"type": "string"}}}}}}}}}}


class DynamicBatcher:
  """Groups concurrent predict calls into one forward pass (server-side
  dynamic batching, as TF Serving and Triton do).

  A call waits at most ``max_wait_s`` for others to join it, and a batch holds
  at most ``max_batch`` rows; the model version is taken once per batch, so a
  hot swap never splits one.

  Args:
    slot: the ModelSlot whose current model answers.
    max_batch: largest number of rows in one forward pass.
    max_wait_s: longest time the first request of a batch waits for others.
  """

  def __init__(self, slot: ModelSlot, max_batch: int = 64,
               max_wait_s: float = 0.001):
    import queue
    if max_batch < 1 or max_wait_s < 0:
      raise ValueError(f"`max_batch` must be >= 1 and `max_wait_s` >= 0. "
                       f"Received: {max_batch}, {max_wait_s}")
    self.slot, self.max_batch, self.max_wait_s = slot, max_batch, max_wait_s
    self._queue: "queue.Queue" = queue.Queue()
    self.batches = 0
    self.rows = 0
    self._thread = threading.Thread(target=self._loop, name="batcher",
                                    daemon=True)
    self._thread.start()

  class _Request:
    def __init__(self, x):
      self.x = x
      self.future: concurrent.futures.Future = concurrent.futures.Future()

  def submit(self, x: np.ndarray) -> concurrent.futures.Future:
    """Queues ``x``; the future resolves to (probabilities, version).

    An asyncio handler awaits it with ``asyncio.wrap_future`` and so waits
    without holding a worker thread.
    """
    request = self._Request(x)
    self._queue.put(request)
    return request.future

  def predict(self, x: np.ndarray) -> tuple[np.ndarray, int]:
    return self.submit(x).result()

  def _loop(self) -> None:
    import queue
    import time
    while True:
      first = self._queue.get()
      if first is None:
        return
      batch, rows = [first], len(first.x)
      deadline = time.monotonic() + self.max_wait_s
      stop = False
      while rows < self.max_batch:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
          break
        try:
          nxt = self._queue.get(timeout=timeout)
        except queue.Empty:
          break
        if nxt is None:
          stop = True
          break
        batch.append(nxt)
        rows += len(nxt.x)
      served = self.slot.current()
      try:
        if served is None:
          raise RequestError("No model is being served yet.", 503)
        out = served.predict(np.concatenate([r.x for r in batch]))
      except Exception as e:  # every waiting request gets the error
        for r in batch:
          r.future.set_exception(e)
      else:
        start = 0
        for r in batch:
          r.future.set_result((out[start:start + len(r.x)], served.version))
          start += len(r.x)
      self.batches += 1
      self.rows += rows
      if stop:
        return

  def stop(self) -> None:
    self._queue.put(None)
    self._thread.join(timeout=5)

"""Python clients of the edge and cloud services (for apps and experiments)."""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import httpx
import numpy as np


class ServiceError(RuntimeError):
  """A service answered with an error status."""

  def __init__(self, status: int, message: str):
    super().__init__(f"HTTP {status}: {message}")
    self.status = status
    self.message = message


class _Client:
  def __init__(self, base_url: str, token: str | None = None, *,
               timeout: float = 60.0, verify: Any = True):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                             timeout=timeout, verify=verify)

  def close(self) -> None:
    self.http.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _check(self, response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
      try:
        message = response.json().get("error", response.text)
      except ValueError:
        message = response.text
      raise ServiceError(response.status_code, message)
    return response

  def get(self, path: str, **kw) -> httpx.Response:
    return self._check(self.http.get(path, **kw))

  def post(self, path: str, **kw) -> httpx.Response:
    return self._check(self.http.post(path, **kw))

  def predict(self, model_name: str, instances: np.ndarray | Sequence) -> np.ndarray:
    """TF Serving predict with nested-list instances -> probabilities."""
    body = {"instances": np.asarray(instances, np.float32).tolist()}
    return np.asarray(self.post(f"/v1/models/{model_name}:predict",
                                json=body).json()["predictions"], np.float32)

  def predict_npy(self, model_name: str, instances: np.ndarray) -> np.ndarray:
    """Predict with a binary .npy body (float32 model inputs), the fast path
    of the edge service; the answer is TF Serving's JSON."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(instances, np.float32), allow_pickle=False)
    return np.asarray(self.post(
        f"/v1/models/{model_name}:predict", content=buf.getvalue(),
        headers={"Content-Type": "application/x-npy"}).json()["predictions"],
        np.float32)

  def predict_images(self, model_name: str, images: Sequence[bytes]) -> np.ndarray:
    """TF Serving predict with {"b64": ...} encoded JPEG/PNG images."""
    body = {"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}
    return np.asarray(self.post(f"/v1/models/{model_name}:predict",
                                json=body).json()["predictions"], np.float32)

  def model_status(self, model_name: str) -> dict:
    return self.get(f"/v1/models/{model_name}").json()


class EdgeClient(_Client):
  """Client of an edge service; ``token`` is needed for the admin calls."""

  model_name = "edgecnn"

  def classify(self, image: bytes, content_type: str = "image/png") -> dict:
    """Uploads raw JPEG/PNG bytes; returns class, probabilities, model
    version and the stored object's id."""
    return self.post("/v1/classify", content=image,
                     headers={"Content-Type": content_type}).json()

  def status(self) -> dict:
    return self.get("/v1/status").json()

  def object_state(self, object_id: str) -> dict:
    return self.get(f"/v1/objects/{object_id}").json()

  def force_upload(self) -> dict:
    return self.post("/v1/admin/upload").json()

  def force_retrain(self) -> dict:
    return self.post("/v1/admin/retrain").json()


class CloudClient(_Client):
  """Client of the cloud service (every call needs the token)."""

  model_name = "cloud_cnn"

  def shared_layers(self, num_shared: int, edge: str) -> tuple[bytes, dict]:
    r = self.get(f"/v1/shared_layers/{num_shared}", params={"edge": edge})
    return r.content, {"model_hash": r.headers.get("x-cloud-model-hash"),
                       "sha256": r.headers.get("x-payload-sha256")}

  def label(self, edge: str, objects: Sequence[tuple[str, np.ndarray]],
            *, compress: bool = True) -> tuple[list[dict], int]:
    """Sends pre-processed objects for labelling; returns (labels, bytes sent).

    The JSON body is gzip-compressed by default, which wins back most of
    base64's overhead on the way across the core network.
    """
    import gzip
    import json
    body = json.dumps({"edge": edge, "objects": [
        {"id": i, "b64": base64.b64encode(np.ascontiguousarray(t, np.uint8)
                                          .tobytes()).decode()}
        for i, t in objects]}).encode()
    headers = {"Content-Type": "application/json"}
    if compress:
      body = gzip.compress(body, 6)
      headers["Content-Encoding"] = "gzip"
    request = self.http.build_request("POST", "/v1/label", content=body,
                                      headers=headers)
    response = self._check(self.http.send(request))
    return response.json()["labels"], len(request.content)

"""The edge's pure-ASGI predict fast path: it answers only well-formed
bodies, exactly as the FastAPI route would, and hands everything else to the
route with the body intact."""

import asyncio
import io
import json
import types

import numpy as np
import pytest

from edgecnn import serving
from edgecnn.edge import service as edge_service


class _Edge:
  crop = 4
  info = types.SimpleNamespace(image_shape=(6, 6, 1))

  def __init__(self, ready=True):
    self.slot = types.SimpleNamespace(
        current=lambda: object() if ready else None)
    self.calls = 0

  async def predict_async(self, x):
    self.calls += 1
    probs = np.zeros((len(x), 3), np.float32)
    probs[:, 1] = x.reshape(len(x), -1).mean(axis=1)
    return probs, 1


def _call(edge, body, *, ctype=b"application/json", length=True, chunks=1,
          path=edge_service.FastPredict.PATH, method="POST"):
  """Runs the middleware over one request; returns (sent messages, what the
  inner app received or None if it was not called)."""
  inner = {}

  async def app(scope, receive, send):
    parts = []
    while True:
      message = await receive()
      parts.append(message.get("body", b""))
      if not message.get("more_body"):
        break
    inner["body"] = b"".join(parts)
    await send({"type": "http.response.start", "status": 499, "headers": []})
    await send({"type": "http.response.body", "body": b"route"})

  headers = [(b"content-type", ctype)]
  if length:
    headers.append((b"content-length", str(len(body)).encode()))
  pieces = ([body] if chunks == 1
            else [body[:len(body) // 2], body[len(body) // 2:]])
  messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
              for i, p in enumerate(pieces)]
  sent = []

  async def receive():
    return messages.pop(0)

  async def send(message):
    sent.append(message)

  scope = {"type": "http", "path": path, "method": method, "headers": headers}
  asyncio.run(edge_service.FastPredict(app, edge)(scope, receive, send))
  return sent, inner.get("body")


def _npy(x):
  buf = io.BytesIO()
  np.save(buf, x, allow_pickle=False)
  return buf.getvalue()


X = np.full((2, 4, 4, 1), 0.5, np.float32)


@pytest.mark.parametrize("body,ctype,chunks", [
    (json.dumps({"instances": X.tolist()}).encode(), b"application/json", 1),
    (json.dumps({"instances": X.tolist()}).encode(), b"application/json", 2),
    (_npy(X), serving.NPY_CONTENT_TYPE.encode(), 2),
])
def test_well_formed_bodies_are_answered_without_the_route(body, ctype, chunks):
  edge = _Edge()
  sent, routed = _call(edge, body, ctype=ctype, chunks=chunks)
  assert routed is None and edge.calls == 1
  assert sent[0]["status"] == 200
  headers = dict(sent[0]["headers"])
  assert headers[b"content-type"] == b"application/json"
  assert int(headers[b"content-length"]) == len(sent[1]["body"])
  # The same bytes the route's predictions_response would send.
  expected = serving.predictions_body(
      np.array([[0, 0.5, 0]] * 2, np.float32))
  assert sent[1]["body"] == expected
  assert json.loads(sent[1]["body"]) == {"predictions": [[0, 0.5, 0]] * 2}


@pytest.mark.parametrize("case,kwargs", [
    ("malformed JSON", {"body": b"{not json"}),
    ("wrong shape", {"body": json.dumps({"instances": [[1, 2]]}).encode()}),
    ("NaN in npy", {"body": _npy(np.full((1, 4, 4, 1), np.nan, np.float32)),
                    "ctype": serving.NPY_CONTENT_TYPE.encode(), "chunks": 2}),
    ("b64 image", {"body": b'{"instances": [{"b64": "AAAA"}]}'}),
    ("unsupported type", {"body": b"x", "ctype": b"text/plain"}),
    ("no Content-Length", {"body": json.dumps({"instances": X.tolist()}).encode(),
                           "length": False}),
    ("JSON over the inline size",
     {"body": b" " * (edge_service.INLINE_PARSE_BYTES + 1)}),
])
def test_everything_else_reaches_the_route_with_its_body(case, kwargs):
  edge = _Edge()
  sent, routed = _call(edge, **kwargs)
  assert routed == kwargs["body"], case
  assert sent[0]["status"] == 499 and edge.calls == 0, case


def test_other_paths_methods_and_an_initialising_edge_go_to_the_route():
  body = json.dumps({"instances": X.tolist()}).encode()
  for kwargs in ({"path": "/v1/models/edgecnn/versions/1:predict"},
                 {"method": "PUT"}):
    sent, routed = _call(_Edge(), body, **kwargs)
    assert routed == body and sent[0]["status"] == 499
  sent, routed = _call(_Edge(ready=False), body)
  assert routed == body and sent[0]["status"] == 499


def test_a_failing_model_is_answered_by_the_route():
  edge = _Edge()

  async def broken(x):
    raise RuntimeError("model exploded")
  edge.predict_async = broken
  body = _npy(X)
  sent, routed = _call(edge, body, ctype=serving.NPY_CONTENT_TYPE.encode())
  assert routed == body and sent[0]["status"] == 499

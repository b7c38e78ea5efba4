"""Every bad request a client can send gets a clear 4xx JSON error, and the
service answers normally afterwards (issue: services under bad input)."""

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest

from edgecnn import client as client_lib
from edgecnn import data as data_lib
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.cloud import service as cloud_service
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import service as edge_service
from tests.conftest import fake_dataset
from tests.conftest import save_tiny_cloud


@pytest.fixture(scope="module")
def services(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  ds = fake_dataset("fashion_mnist", n_train=40, n_test=4)
  save_tiny_cloud(root / "cloud")
  runtime = cloud_service.CloudRuntime(root / "cloud", root / "cs", token="tok")
  cloud = serving.BackgroundServer(cloud_service.create_app(runtime)).start()
  labelled = runtime_lib.LabelledData(
      ds.x_train, ds.y_train, data_lib.subset_split(40, None, seed=0), ds.info,
      "fake")
  edge = runtime_lib.EdgeRuntime(
      runtime_lib.EdgeConfig(edge_id="e", workdir=root / "e",
                             train_config=train_lib.get_config("quick")),
      labelled, client_lib.CloudClient(cloud.url, "tok"), admin_token="adm")
  edge.start()
  server = serving.BackgroundServer(edge_service.create_app(edge)).start()
  yield server.url, cloud.url, ds
  server.stop()
  edge.stop()
  cloud.stop()


def _png_header_claiming(width, height):
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data)))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 10)


PREDICT = "/v1/models/edgecnn:predict"
GOOD = {"instances": np.zeros((1, 24, 24, 1)).tolist()}
NPY = serving.NPY_CONTENT_TYPE


def _npy(array, allow_pickle=False):
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=allow_pickle)
  return buf.getvalue()

CASES = [
    # (name, method, path, kwargs, status, message fragment)
    ("malformed JSON", "post", PREDICT,
     {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
     400, "Malformed JSON"),
    ("body not an object", "post", PREDICT, {"json": [1, 2]}, 400,
     "JSON object"),
    ("no instances", "post", PREDICT, {"json": {"foo": 1}}, 400,
     "exactly one of 'instances' or 'inputs'"),
    ("instances not a list", "post", PREDICT, {"json": {"instances": 3}}, 400,
     "must be a list"),
    ("empty instances", "post", PREDICT, {"json": {"instances": []}}, 400,
     "is empty"),
    ("too many instances", "post", PREDICT,
     {"json": {"instances": [0] * (serving.MAX_INSTANCES + 1)}}, 413,
     "exceed the limit"),
    ("wrong shape", "post", PREDICT,
     {"json": {"instances": np.zeros((1, 28, 28, 1)).tolist()}}, 400,
     "expects [24, 24, 1]"),
    ("ragged nesting", "post", PREDICT,
     {"json": {"instances": [[[0.0] * 24] * 23 + [[0.0] * 3]]}}, 400,
     "instances[0]"),
    ("strings", "post", PREDICT,
     {"json": {"instances": [[["a"] * 24] * 24]}}, 400, "numeric"),
    ("NaN", "post", PREDICT,
     {"content": json.dumps({"instances": [[[float("nan")] * 24] * 24]}),
      "headers": {"Content-Type": "application/json"}}, 400, "NaN or infinity"),
    ("bad b64", "post", PREDICT, {"json": {"instances": [{"b64": "%%%"}]}}, 400,
     "invalid base64"),
    ("b64 not an image", "post", PREDICT,
     {"json": {"instances": [{"b64": base64.b64encode(b"hello").decode()}]}},
     400, "Could not decode"),
    ("unexpected object keys", "post", PREDICT,
     {"json": {"instances": [{"img": "x"}]}}, 400, "{\"b64\": ...}"),
    ("unsupported content type (predict)", "post", PREDICT,
     {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415,
     "application/json"),
    ("npy: not an npy file", "post", PREDICT,
     {"content": b"PK\x03\x04garbage", "headers": {"Content-Type": NPY}}, 400,
     "not a .npy array"),
    ("npy: truncated", "post", PREDICT,
     {"content": _npy(np.zeros((2, 24, 24, 1), np.float32))[:-10],
      "headers": {"Content-Type": NPY}}, 400, "not a .npy array"),
    ("npy: pickled object array", "post", PREDICT,
     {"content": _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
      "headers": {"Content-Type": NPY}}, 400, "not a .npy array"),
    ("npy: integer dtype", "post", PREDICT,
     {"content": _npy(np.zeros((1, 24, 24, 1), np.uint8)),
      "headers": {"Content-Type": NPY}}, 400, "dtype uint8"),
    ("npy: wrong shape", "post", PREDICT,
     {"content": _npy(np.zeros((1, 28, 28, 1), np.float32)),
      "headers": {"Content-Type": NPY}}, 400, "expects [N, 24, 24, 1]"),
    ("npy: no instance", "post", PREDICT,
     {"content": _npy(np.zeros((0, 24, 24, 1), np.float32)),
      "headers": {"Content-Type": NPY}}, 400, "no instance"),
    ("npy: NaN", "post", PREDICT,
     {"content": _npy(np.full((1, 24, 24, 1), np.nan, np.float32)),
      "headers": {"Content-Type": NPY}}, 400, "NaN or infinity"),
    ("npy: too many instances", "post", PREDICT,
     {"content": _npy(np.zeros((serving.MAX_INSTANCES + 1, 24, 24, 1),
                               np.float32)),
      "headers": {"Content-Type": NPY}}, 413, "exceed the limit"),
    ("unknown model", "post", "/v1/models/resnet:predict", {"json": GOOD}, 404,
     "Servable not found"),
    ("unknown version", "get", "/v1/models/edgecnn/versions/7", {}, 404,
     "versions [1]"),
    ("non-ASCII digit version", "get", "/v1/models/edgecnn/versions/%C2%B2",
     {}, 404, "versions [1]"),
    ("negative version", "get", "/v1/models/edgecnn/versions/-1", {}, 404,
     "versions [1]"),
    ("unknown version (predict)", "post",
     "/v1/models/edgecnn/versions/3:predict", {"json": GOOD}, 404,
     "versions [1]"),
    ("unsupported content type (classify)", "post", "/v1/classify",
     {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415,
     "not supported"),
    ("empty image", "post", "/v1/classify",
     {"content": b"", "headers": {"Content-Type": "image/png"}}, 400,
     "Empty image"),
    ("not an image", "post", "/v1/classify",
     {"content": b"GIF89a-or-garbage" * 10,
      "headers": {"Content-Type": "image/png"}}, 400, "Could not decode"),
    ("truncated PNG", "post", "/v1/classify",
     {"content": serving.encode_png(np.zeros((28, 28, 1), np.uint8))[:40],
      "headers": {"Content-Type": "image/png"}}, 400, "Could not decode"),
    ("huge claimed dimensions", "post", "/v1/classify",
     {"content": _png_header_claiming(60000, 60000),
      "headers": {"Content-Type": "image/png"}}, 413, "refused before decoding"),
    ("body over the size limit", "post", "/v1/classify",
     {"content": b"\0" * (serving.MAX_IMAGE_BYTES + 1),
      "headers": {"Content-Type": "image/png"}}, 413, "exceeds the limit"),
    ("hostile object id", "get", "/v1/objects/x';DROP TABLE objects;--", {},
     400, "32 lowercase hex"),
    ("path traversal", "get", "/v1/objects/..%2F..%2Fetc%2Fpasswd", {}, 404,
     "No such endpoint"),
    ("unknown route", "get", "/v2/anything", {}, 404, "No such endpoint"),
    ("wrong method", "get", "/v1/classify", {}, 405, "not allowed"),
    ("unknown object id", "get", "/v1/objects/" + "0" * 32, {}, 404,
     "No object"),
    ("admin without token", "post", "/v1/admin/retrain", {}, 401,
     "Bearer"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_answered_clearly_and_service_survives(services, case):
  url, _, ds = services
  name, method, path, kwargs, status, fragment = case
  response = getattr(httpx, method)(url + path, timeout=60, **kwargs)
  assert response.status_code == status, response.text
  assert fragment in response.json()["error"]
  after = httpx.post(url + PREDICT, json=GOOD, timeout=60)
  assert after.status_code == 200 and len(after.json()["predictions"]) == 1


CLOUD_CASES = [
    ("label: not an object", {"json": [1]}, 400, "JSON object"),
    ("label: malformed JSON", {"content": b"{", "headers": {
        "Content-Type": "application/json"}}, 400, "Malformed JSON"),
    ("label: no objects", {"json": {"edge": "e", "objects": []}}, 400,
     "non-empty list"),
    ("label: bad edge id", {"json": {"edge": "../x", "objects": [{}]}}, 400,
     "Edge id"),
    ("label: hostile object id",
     {"json": {"edge": "e", "objects": [{"id": "'; DROP TABLE labels;--",
                                         "b64": ""}]}}, 400, "32 lowercase hex"),
    ("label: wrong tensor size",
     {"json": {"edge": "e", "objects": [{"id": "a" * 32,
                                         "b64": base64.b64encode(b"12").decode()}]}},
     400, "784 bytes"),
    ("label: repeated id",
     {"json": {"edge": "e", "objects": [
         {"id": "a" * 32, "b64": base64.b64encode(bytes(784)).decode()}] * 2}},
     400, "repeated"),
]


@pytest.mark.parametrize("case", CLOUD_CASES, ids=[c[0] for c in CLOUD_CASES])
def test_cloud_bad_label_requests(services, case):
  _, cloud_url, _ = services
  name, kwargs, status, fragment = case
  kwargs = dict(kwargs)
  headers = {"Authorization": "Bearer tok", **kwargs.pop("headers", {})}
  r = httpx.post(cloud_url + "/v1/label", headers=headers, timeout=60, **kwargs)
  assert r.status_code == status and fragment in r.json()["error"], r.text
  assert httpx.get(cloud_url + "/healthz").status_code == 200


def test_shared_layers_bad_m_type(services):
  _, cloud_url, _ = services
  r = httpx.get(cloud_url + "/v1/shared_layers/three",
                headers={"Authorization": "Bearer tok"})
  assert r.status_code == 400 and "Invalid request" in r.json()["error"]


def test_gzip_label_bodies(services):
  import gzip
  _, cloud_url, ds = services
  c = client_lib.CloudClient(cloud_url, "tok")
  labels, sent = c.label("e", [("c" * 32, ds.x_train[0])])
  plain, sent_plain = c.label("e", [("c" * 32, ds.x_train[0])], compress=False)
  assert labels == plain and sent < sent_plain
  headers = {"Authorization": "Bearer tok", "Content-Type": "application/json",
             "Content-Encoding": "gzip"}
  bomb = gzip.compress(b" " * (cloud_service.MAX_BODY_BYTES + 10))
  r = httpx.post(cloud_url + "/v1/label", content=bomb, headers=headers)
  assert r.status_code == 413 and "expands beyond" in r.json()["error"]
  r = httpx.post(cloud_url + "/v1/label", content=b"not gzip", headers=headers)
  assert r.status_code == 400 and "not valid gzip" in r.json()["error"]
  r = httpx.post(cloud_url + "/v1/label", content=b"{}",
                 headers={**headers, "Content-Encoding": "br"})
  assert r.status_code == 415


def test_npy_body_answers_as_the_json_body(services):
  url, _, ds = services
  client = client_lib.EdgeClient(url)
  x = np.random.default_rng(0).random((5, 24, 24, 1), dtype=np.float32)
  by_json = client.predict("edgecnn", x)
  by_npy = client.predict_npy("edgecnn", x)
  assert by_npy.shape == (5, 10)
  np.testing.assert_allclose(by_npy, by_json, atol=1e-6)
  # float64 arrays and big-endian headers (np.load's slow path) work too.
  by_f64 = client.post(PREDICT, content=_npy(x.astype(">f8")),
                       headers={"Content-Type": NPY}).json()["predictions"]
  np.testing.assert_allclose(by_f64, by_json, atol=1e-6)

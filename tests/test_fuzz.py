"""Schema-driven fuzzing of both services (bounded): no 5xx, no crash.

A longer run: EDGECNN_FUZZ_EXAMPLES=500 python -m pytest tests/test_fuzz.py
"""

import os

import hypothesis
import pytest
import schemathesis

from edgecnn import client as client_lib
from edgecnn import data as data_lib
from edgecnn import serving
from edgecnn import train as train_lib
from edgecnn.cloud import service as cloud_service
from edgecnn.edge import runtime as runtime_lib
from edgecnn.edge import service as edge_service
from tests.conftest import fake_dataset
from tests.conftest import save_tiny_cloud

EXAMPLES = int(os.environ.get("EDGECNN_FUZZ_EXAMPLES", "15"))


def _apps(root):
  ds = fake_dataset("fashion_mnist", n_train=30, n_test=4)
  save_tiny_cloud(root / "cloud")
  runtime = cloud_service.CloudRuntime(root / "cloud", root / "cs", token="tok")
  cloud_app = cloud_service.create_app(runtime)
  server = serving.BackgroundServer(cloud_app).start()
  edge = runtime_lib.EdgeRuntime(
      runtime_lib.EdgeConfig(edge_id="z", workdir=root / "e",
                             train_config=train_lib.get_config("quick")),
      runtime_lib.LabelledData(ds.x_train, ds.y_train,
                               data_lib.subset_split(30, None, seed=0), ds.info,
                               "fake"),
      client_lib.CloudClient(server.url, "tok"), admin_token="adm")
  edge.start()
  return cloud_app, edge_service.create_app(edge), server, edge


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
  cloud_app, edge_app, server, edge = _apps(tmp_path_factory.mktemp("fuzz"))
  yield {"cloud": cloud_app, "edge": edge_app}
  edge.stop()
  server.stop()


@pytest.mark.parametrize("which", ["edge", "cloud"])
def test_no_5xx_under_schema_fuzzing(apps, which):
  schema = schemathesis.openapi.from_asgi("/openapi.json", apps[which])
  failures = []
  for operation in schema.get_all_operations():
    op = operation.ok()
    strategy = op.as_strategy()

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case):
      headers = {"Authorization": "Bearer tok"} if which == "cloud" else {}
      response = case.call(headers=headers)
      if response.status_code >= 500:
        failures.append((op.label, response.status_code, response.text[:200]))

    run()
  assert not failures, failures[:5]

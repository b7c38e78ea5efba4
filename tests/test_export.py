import numpy as np
import pytest

from edgecnn import export
from edgecnn import models


def test_saved_model_round_trip_in_tf_serving_layout(tmp_path):
  model = models.build_cloud_cnn((12, 12, 1), preset="compact", seed=0)
  path = export.export_saved_model(model, tmp_path, "edgecnn", 1)
  assert path == tmp_path / "edgecnn" / "1"
  assert (path / "saved_model.pb").is_file()
  assert export.latest_version(tmp_path, "edgecnn") == 1
  x = np.random.default_rng(0).random((3, 12, 12, 1), dtype=np.float32)
  # Reload in a fresh process that never saw the Keras model.
  diff = export.check_in_fresh_process(path, x, model.predict(x, verbose=0),
                                       atol=1e-6)
  assert diff <= 1e-6
  with pytest.raises(AssertionError, match="disagrees"):
    export.check_in_fresh_process(path, x, model.predict(x, verbose=0) + 0.1)
  with pytest.raises(FileExistsError):
    export.export_saved_model(model, tmp_path, "edgecnn", 1)
  export.export_saved_model(model, tmp_path, "edgecnn", 2)
  assert export.latest_version(tmp_path, "edgecnn") == 2
  assert not [p for p in (tmp_path / "edgecnn").iterdir()
              if p.name.startswith(".")]


@pytest.mark.parametrize("name,version", [("", 1), ("a/b", 1), ("m", 0),
                                          ("m", True), ("m", "1")])
def test_bad_version_dir(tmp_path, name, version):
  with pytest.raises(ValueError):
    export.version_dir(tmp_path, name, version)

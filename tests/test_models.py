import numpy as np
import pytest

import keras
from edgecnn import models

TINY = (12, 12, 1)


def test_paper_preset_layers_and_exact_parameter_count():
  model = models.build_cloud_cnn((28, 28, 1), preset="paper")
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert [l.name for l in convs] == models.conv_layer_names()
  assert [l.filters for l in convs] == [32] * 3 + [48] * 2 + [80] * 5 + [128] * 5
  assert all(l.kernel_size == (3, 3) and l.padding == "same" for l in convs)
  pools = [l for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
  assert [(p.name, p.pool_size, p.strides) for p in pools] == [
      ("head_pool", (2, 2), (1, 1))]
  assert model.get_layer("fc1").units == 1024
  assert model.get_layer("head_dropout1").rate == 0.25
  assert model.get_layer("head_dropout2").rate == 0.25
  assert model.output_shape == (None, 10)
  assert model.count_params() == 96_564_218


def test_compact_preset_exact_parameter_counts():
  model = models.build_cloud_cnn((28, 28, 1), preset="compact")
  pools = [l.name for l in model.layers
           if isinstance(l, keras.layers.MaxPooling2D)]
  assert pools == ["block1_pool", "block2_pool", "block3_pool", "block4_pool",
                   "head_pool"]
  assert model.count_params() == 1_143_802
  assert models.build_cloud_cnn((32, 32, 3), preset="compact").count_params() \
      == 1_144_378


@pytest.mark.parametrize("m,trainable,frozen", [
    (3, 6_433_802, 18_816), (5, 2_419_722, 53_472), (10, 1_321_994, 318_832)])
def test_compact_edge_parameter_counts(m, trainable, frozen):
  cloud = models.build_cloud_cnn((28, 28, 1), preset="compact")
  edge = models.build_edge_cnn(cloud, m)
  assert models.count_params(edge) == (trainable, frozen)
  convs = [l.name for l in edge.layers if isinstance(l, keras.layers.Conv2D)]
  assert convs == models.conv_layer_names()[:m]


def test_head_pool_override_swaps_the_presets_edge_heads():
  compact = models.build_cloud_cnn((28, 28, 1), preset="compact", seed=1)
  paper = models.build_cloud_cnn((28, 28, 1), preset="paper", seed=1)
  # A compact cloud's shared convs under the paper's head have the paper
  # EdgeCNN-3's shape (and the other way round), with the cloud's weights.
  as_paper = models.build_edge_cnn_from_payload(
      models.export_shared_layers(compact, 3), head_pool="paper")
  assert models.count_params(as_paper) == models.count_params(
      models.build_edge_cnn(paper, 3))
  assert as_paper.get_layer("head_pool").strides == (1, 1)
  assert as_paper.get_layer("flatten").output.shape[-1] == 27 * 27 * 32
  np.testing.assert_array_equal(
      as_paper.get_layer("block1_conv2").get_weights()[0],
      compact.get_layer("block1_conv2").get_weights()[0])
  as_compact = models.build_edge_cnn_from_payload(
      models.export_shared_layers(paper, 3), head_pool="compact")
  assert models.count_params(as_compact) == (6_433_802, 18_816)
  with pytest.raises(ValueError, match="head_pool"):
    models.build_edge_cnn_from_payload(
        models.export_shared_layers(compact, 3), head_pool="stride3")


def test_edge_includes_group_pools_between_shared_convs():
  cloud = models.build_cloud_cnn(TINY, preset="compact")
  edge = models.build_edge_cnn(cloud, 5)
  assert models.shared_layer_names(edge) == [
      "block1_conv1", "block1_conv2", "block1_conv3", "block1_pool",
      "block2_conv1", "block2_conv2"]


def test_edgecnn1_frozen_layers_keep_cloud_weights_through_fit_head_changes():
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=1)
  cloud_before = [w.copy() for w in cloud.get_weights()]
  edge = models.build_edge_cnn(cloud, 3, seed=2)
  shared = models.shared_layer_names(edge)
  for name in shared:
    for a, b in zip(edge.get_layer(name).get_weights(),
                    cloud.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)
  head_before = [w.copy() for w in edge.get_layer("fc1").get_weights()]
  edge.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
               loss="sparse_categorical_crossentropy")
  x = np.random.default_rng(0).random((16, *TINY), dtype=np.float32)
  y = np.arange(16) % 10
  edge.fit(x, y, epochs=2, batch_size=8, verbose=0)
  for name in shared:
    assert not edge.get_layer(name).trainable
    for a, b in zip(edge.get_layer(name).get_weights(),
                    cloud.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(head_before, edge.get_layer("fc1").get_weights()))
  for a, b in zip(cloud_before, cloud.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert all(l.trainable for l in cloud.layers)


def test_train_shared_starts_at_cloud_weights_and_trains_them():
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=1)
  payload = models.export_shared_layers(cloud, 3)
  frozen = models.build_edge_cnn_from_payload(payload, seed=2)
  edge = models.build_edge_cnn_from_payload(payload, seed=2, train_shared=True)
  shared = models.shared_layer_names(edge)
  assert edge.pretrained and all(edge.get_layer(n).trainable for n in shared)
  assert models.count_params(edge) == (sum(models.count_params(frozen)), 0)
  for name in shared:
    for a, b in zip(edge.get_layer(name).get_weights(),
                    cloud.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)
  # The head is the frozen model's, draw for draw: only the freezing differs.
  for a, b in zip(edge.get_layer("fc1").get_weights(),
                  frozen.get_layer("fc1").get_weights()):
    np.testing.assert_array_equal(a, b)
  assert sorted(edge.transferred_weights) == [
      "block1_conv1", "block1_conv2", "block1_conv3"]
  edge.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
               loss="sparse_categorical_crossentropy")
  x = np.random.default_rng(0).random((16, *TINY), dtype=np.float32)
  edge.fit(x, np.arange(16) % 10, epochs=2, batch_size=8, verbose=0)
  moved = edge.get_layer("block1_conv1").get_weights()[0]
  assert not np.array_equal(moved, cloud.get_layer("block1_conv1").get_weights()[0])
  # The kept copy is the cloud's, not a view of the trained layer.
  np.testing.assert_array_equal(edge.transferred_weights["block1_conv1"][0],
                                cloud.get_layer("block1_conv1").get_weights()[0])
  with pytest.raises(ValueError, match=r"EdgeCNN0.*Received: pretrained=False"):
    models.build_edge_cnn_from_payload(payload, pretrained=False,
                                       train_shared=True)


def test_edge_shares_no_layer_objects_with_cloud():
  cloud = models.build_cloud_cnn(TINY, preset="compact")
  edge = models.build_edge_cnn(cloud, 10)
  assert not {id(l) for l in edge.layers} & {id(l) for l in cloud.layers}
  assert not ({id(v) for v in edge.weights} & {id(v) for v in cloud.weights})
  edge.get_layer("block1_conv1").trainable = True
  assert cloud.get_layer("block1_conv1").trainable


def test_edgecnn0_has_no_frozen_layer_and_fresh_weights():
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=1)
  edge0 = models.build_edge_cnn(cloud, 5, pretrained=False, seed=3)
  assert models.count_params(edge0)[1] == 0
  assert all(l.trainable for l in edge0.layers)
  assert not np.array_equal(edge0.get_layer("block1_conv1").get_weights()[0],
                            cloud.get_layer("block1_conv1").get_weights()[0])
  assert edge0.name == "edge_cnn0_5"


@pytest.mark.parametrize("m", [0, 16, -1, 3.5, True, "3", None])
def test_bad_num_shared_names_valid_range(m):
  cloud = models.build_cloud_cnn(TINY, preset="compact")
  with pytest.raises(ValueError, match=r"1\.\.15.*Received: num_shared="):
    models.build_edge_cnn(cloud, m)


def test_bad_builder_arguments():
  with pytest.raises(ValueError, match="preset.*Received: preset='vgg'"):
    models.build_cloud_cnn(TINY, preset="vgg")
  with pytest.raises(ValueError, match="kernel_initializer"):
    models.build_cloud_cnn(TINY, kernel_initializer="zeros")
  with pytest.raises(ValueError, match="input_shape"):
    models.build_cloud_cnn((28, 28))
  with pytest.raises(ValueError, match="num_classes"):
    models.build_cloud_cnn(TINY, num_classes=1)


def test_payload_round_trip_same_predictions_and_hash():
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=4)
  payload = models.export_shared_layers(cloud, 5)
  assert isinstance(payload, bytes)
  direct = models.build_edge_cnn(cloud, 5, seed=9)
  keras.backend.clear_session()
  rebuilt = models.build_edge_cnn_from_payload(payload, seed=9)
  x = np.random.default_rng(1).random((4, *TINY), dtype=np.float32)
  np.testing.assert_allclose(direct.predict(x, verbose=0),
                             rebuilt.predict(x, verbose=0), atol=1e-6)
  assert rebuilt.cloud_model_hash == models.model_hash(cloud)
  manifest, weights = models.read_payload(payload)
  assert manifest["num_shared"] == 5
  assert set(weights) == {f"{n}/{i}" for n in
                          ["block1_conv1", "block1_conv2", "block1_conv3",
                           "block2_conv1", "block2_conv2"] for i in (0, 1)}


def test_payload_hash_changes_with_weights():
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=4)
  h1 = models.model_hash(cloud)
  w = cloud.get_layer("fc1").get_weights()
  cloud.get_layer("fc1").set_weights([w[0] + 1, w[1]])
  assert models.model_hash(cloud) != h1


def test_payload_edge_num_classes_override():
  cloud = models.build_cloud_cnn(TINY, preset="compact")
  edge = models.build_edge_cnn_from_payload(
      models.export_shared_layers(cloud, 3), num_classes=4)
  assert edge.output_shape == (None, 4)


def test_bad_payloads_are_rejected():
  with pytest.raises(models.PayloadError, match="Not a shared-layers payload"):
    models.build_edge_cnn_from_payload(b"not a zip")
  import io, json, zipfile
  cloud = models.build_cloud_cnn(TINY, preset="compact")
  payload = models.export_shared_layers(cloud, 3)
  with zipfile.ZipFile(io.BytesIO(payload)) as zf:
    manifest = json.loads(zf.read("manifest.json"))
    weights = zf.read("weights.npz")
  manifest["layers"][0]["class_name"] = "Lambda"
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as zf:
    zf.writestr("manifest.json", json.dumps(manifest))
    zf.writestr("weights.npz", weights)
  with pytest.raises(models.PayloadError, match="'Lambda'"):
    models.read_payload(buf.getvalue())


def test_seed_makes_initialisation_reproducible():
  a = models.build_cloud_cnn(TINY, preset="compact", seed=7)
  b = models.build_cloud_cnn(TINY, preset="compact", seed=7)
  c = models.build_cloud_cnn(TINY, preset="compact", seed=8)
  assert models.model_hash(a) == models.model_hash(b) != models.model_hash(c)


def test_a_payload_is_the_same_bytes_whenever_it_is_exported(monkeypatch):
  import time
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=4)
  first = models.export_shared_layers(cloud, 3)
  later = time.time() + 3 * 3600
  monkeypatch.setattr(time, "time", lambda: later)  # zip entry times
  assert models.export_shared_layers(cloud, 3) == first
  manifest, weights = models.read_payload(first)
  assert manifest["num_shared"] == 3 and len(weights) == 6  # 3 kernels, biases
  for name, w in weights.items():
    layer, i = name.split("/")
    np.testing.assert_array_equal(w, cloud.get_layer(layer).get_weights()[int(i)])


def test_load_payloads_names_what_a_cloud_directory_lacks(tmp_path):
  from edgecnn import cloud_model
  cloud = models.build_cloud_cnn(TINY, preset="compact", seed=4)
  for m in (3, 5):
    cloud_model.payload_path(tmp_path, m).write_bytes(
        models.export_shared_layers(cloud, m))
  assert not cloud_model.has_weights(tmp_path)
  payloads = cloud_model.load_payloads(tmp_path, [5, 3, 3])
  assert sorted(payloads) == [3, 5]
  assert payloads[3] == models.export_shared_layers(cloud, 3)
  with pytest.raises(FileNotFoundError, match=(
      r"no shared-layers payload for m=\[10\] \(it has m=\[3, 5\]\)\. It "
      r"holds no CloudCNN weights \(cloud.weights.h5\) either")):
    cloud_model.load_payloads(tmp_path, [3, 10])
  other = models.build_cloud_cnn(TINY, preset="compact", seed=5)
  cloud_model.payload_path(tmp_path, 5).write_bytes(
      models.export_shared_layers(other, 5))
  with pytest.raises(models.PayloadError, match="different CloudCNNs"):
    cloud_model.load_payloads(tmp_path, [3, 5])
  with pytest.raises(FileNotFoundError,
                     match=r"No cloud directory .*nowhere: train a CloudCNN"):
    cloud_model.load_payloads(tmp_path / "nowhere", [3])

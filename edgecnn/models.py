"""CloudCNN and EdgeCNN builders and the shared-layers payload.

Reference: Ding et al., "A Cloud-Edge Collaboration Framework for Cognitive
Service", Sec. 3.2 (Algorithms 1 and 2) and Sec. 4.3.1 (architectures).

CloudCNN has 15 ReLU conv layers with 3x3 kernels in four groups
(3x32, 2x48, 5x80, 5x128) followed by a head of max-pool, dropout, FC-1024,
dropout and a softmax layer. EdgeCNN-m is CloudCNN's lower layers up to and
including its m-th conv layer, followed by a fresh head of the same shape.

Presets:
  * ``paper``: one 2x2 max-pool with stride 1 right before the head
    (Sec. 4.3.1), 'valid' padding: 96,564,218 parameters at 28x28x1.
  * ``compact``: a 2x2 stride-2 max-pool ('same' padding) after each conv
    group as in VGG (the paper's ref. [37]), and a stride-2 head pool:
    1,143,802 parameters at 28x28x1, about 10x faster to train on a CPU.

Initialisation: ReLU layers default to He-normal. With Keras' default
Glorot-uniform the paper preset does not train with SGD at lr 0.01 (stuck at
chance on Fashion-MNIST, see FINDINGS in the docs), so the default deviates
from Keras' default on purpose; ``kernel_initializer`` selects another one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from typing import Any, Mapping, Sequence

import keras
import numpy as np

# Defined in config.py (no TensorFlow there) and re-exported.
from edgecnn.config import INITIALIZERS, PRESETS

CONV_GROUPS: tuple[tuple[int, int], ...] = ((3, 32), (2, 48), (5, 80), (5, 128))
NUM_CONV_LAYERS = sum(n for n, _ in CONV_GROUPS)
HEAD_LAYER_NAMES = ("head_pool", "head_dropout1", "flatten", "fc1",
                    "head_dropout2", "predictions")
PAYLOAD_FORMAT = "edgecnn.shared_layers.v1"

# Only these classes may be rebuilt from a payload; a payload names classes
# and plain JSON configs, never code.
_PAYLOAD_LAYERS = {
    "Conv2D": keras.layers.Conv2D,
    "MaxPooling2D": keras.layers.MaxPooling2D,
    "Dropout": keras.layers.Dropout,
    "Flatten": keras.layers.Flatten,
    "Dense": keras.layers.Dense,
}


@dataclasses.dataclass(frozen=True)
class PresetSpec:
  """Pooling layout of a preset."""
  group_pool_strides: int | None
  head_pool_strides: int
  head_pool_padding: str


_PRESET_SPECS = {
    "paper": PresetSpec(group_pool_strides=None, head_pool_strides=1,
                        head_pool_padding="valid"),
    "compact": PresetSpec(group_pool_strides=2, head_pool_strides=2,
                          head_pool_padding="same"),
}


def conv_layer_names() -> list[str]:
  """Names of CloudCNN's 15 conv layers from input to output."""
  return [f"block{g}_conv{i}" for g, (n, _) in enumerate(CONV_GROUPS, 1)
          for i in range(1, n + 1)]


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {list(choices)}. "
                     f"Received: {name}={value!r}")


def _initializer(kind: str, seed: int | None, index: int):
  _check_choice("kernel_initializer", kind, INITIALIZERS)
  cls = {"he_normal": keras.initializers.HeNormal,
         "he_uniform": keras.initializers.HeUniform,
         "glorot_uniform": keras.initializers.GlorotUniform,
         "glorot_normal": keras.initializers.GlorotNormal}[kind]
  return cls(seed=None if seed is None else seed * 1000 + index)


def _head_layers(num_classes: int, *, pool_strides: int, pool_padding: str,
                 dropout: float, fc_units: int, kernel_initializer: str,
                 seed: int | None) -> list[keras.layers.Layer]:
  return [
      keras.layers.MaxPooling2D(2, strides=pool_strides, padding=pool_padding,
                                name="head_pool"),
      keras.layers.Dropout(dropout, name="head_dropout1"),
      keras.layers.Flatten(name="flatten"),
      keras.layers.Dense(fc_units, activation="relu", name="fc1",
                         kernel_initializer=_initializer(
                             kernel_initializer, seed, 100)),
      keras.layers.Dropout(dropout, name="head_dropout2"),
      # float32 even under a mixed-precision policy: a bf16 softmax loses
      # the small probabilities the loss needs (a no-op under float32).
      keras.layers.Dense(num_classes, activation="softmax", name="predictions",
                         dtype="float32",
                         kernel_initializer=_initializer(
                             "glorot_uniform", seed, 101)),
  ]


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
  shape = tuple(input_shape)
  if len(shape) != 3 or any(not isinstance(d, (int, np.integer)) or d < 1
                            for d in shape):
    raise ValueError("`input_shape` must be (height, width, channels) with "
                     f"positive integers. Received: input_shape={input_shape!r}")
  return tuple(int(d) for d in shape)


def build_cloud_cnn(input_shape: Sequence[int], num_classes: int = 10, *,
                    preset: str = "paper", dropout: float = 0.25,
                    fc_units: int = 1024,
                    kernel_initializer: str = "he_normal",
                    seed: int | None = None,
                    name: str = "cloud_cnn") -> keras.Model:
  """Builds CloudCNN (Sec. 4.3.1).

  Args:
    input_shape: (height, width, channels) of the model input (the crop size
      when training with random crops).
    num_classes: size of the softmax layer.
    preset: "paper" (one stride-1 pool before the head) or "compact"
      (a stride-2 pool after each conv group); see the module docstring.
    dropout: dropout rate before and after FC-1024 (paper: 0.25).
    fc_units: width of the fully connected layer (paper: 1024).
    kernel_initializer: initialiser of the ReLU layers, one of INITIALIZERS.
    seed: makes the initial weights reproducible.
    name: model name.

  Returns:
    An uncompiled keras.Model with layers named block{g}_conv{i},
    block{g}_pool (compact), head_pool, fc1 and predictions.
  """
  shape = _check_input_shape(input_shape)
  _check_choice("preset", preset, PRESETS)
  if num_classes < 2:
    raise ValueError(f"`num_classes` must be >= 2. Received: "
                     f"num_classes={num_classes}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
  spec = _PRESET_SPECS[preset]
  inputs = keras.Input(shape=shape, name="image")
  x = inputs
  index = 0
  for g, (n, filters) in enumerate(CONV_GROUPS, 1):
    for i in range(1, n + 1):
      x = keras.layers.Conv2D(
          filters, 3, padding="same", activation="relu",
          kernel_initializer=_initializer(kernel_initializer, seed, index),
          name=f"block{g}_conv{i}")(x)
      index += 1
    if spec.group_pool_strides:
      x = keras.layers.MaxPooling2D(2, strides=spec.group_pool_strides,
                                    padding="same", name=f"block{g}_pool")(x)
  for layer in _head_layers(num_classes, pool_strides=spec.head_pool_strides,
                            pool_padding=spec.head_pool_padding,
                            dropout=dropout, fc_units=fc_units,
                            kernel_initializer=kernel_initializer, seed=seed):
    x = layer(x)
  return keras.Model(inputs, x, name=name)


def _check_num_shared(num_shared: Any) -> int:
  if (isinstance(num_shared, bool) or not isinstance(num_shared, (int, np.integer))
      or not 1 <= num_shared <= NUM_CONV_LAYERS):
    raise ValueError(f"`num_shared` (m) must be an integer in 1..{NUM_CONV_LAYERS}"
                     f" (CloudCNN has {NUM_CONV_LAYERS} conv layers). "
                     f"Received: num_shared={num_shared!r}")
  return int(num_shared)


def _lower_layers(cloud_model: keras.Model, num_shared: int) -> list:
  """The cloud model's layers up to and including the m-th conv layer."""
  last = conv_layer_names()[num_shared - 1]
  names = [layer.name for layer in cloud_model.layers]
  if last not in names:
    raise ValueError(f"The cloud model has no layer named {last!r}; build it "
                     f"with build_cloud_cnn. Received layers: {names}")
  layers = []
  for layer in cloud_model.layers:
    if isinstance(layer, keras.layers.InputLayer):
      continue
    layers.append(layer)
    if layer.name == last:
      return layers
  raise AssertionError("unreachable")


def model_hash(model: keras.Model) -> str:
  """Content hash (sha256 hex) of a model's layer names, classes and weights."""
  digest = hashlib.sha256()
  for layer in model.layers:
    digest.update(f"{layer.name}:{type(layer).__name__};".encode())
    for w in layer.get_weights():
      a = np.ascontiguousarray(w)
      digest.update(f"{a.dtype}{a.shape}".encode())
      digest.update(a.tobytes())
  return digest.hexdigest()


def _layer_record(layer) -> dict:
  config = layer.get_config()
  config.pop("dtype", None)
  return {"class_name": type(layer).__name__, "config": config}


def export_shared_layers(cloud_model: keras.Model, num_shared: int) -> bytes:
  """Serialises CloudCNN's m lower layers to bytes (Alg. 1, step 1).

  The payload is a zip archive holding ``manifest.json`` (format, the cloud
  model's content hash, input shape, the lower layers' and the head's plain
  JSON configs) and ``weights.npz`` (the lower layers' weights, no pickles).
  Nothing in it is code: ``build_edge_cnn_from_payload`` rebuilds only
  allow-listed layer classes.

  Args:
    cloud_model: a model from build_cloud_cnn.
    num_shared: m, in 1..15.

  Returns:
    The payload bytes.
  """
  m = _check_num_shared(num_shared)
  lower = _lower_layers(cloud_model, m)
  head = [cloud_model.get_layer(n) for n in HEAD_LAYER_NAMES]
  manifest = {
      "format": PAYLOAD_FORMAT,
      "cloud_model_name": cloud_model.name,
      "cloud_model_hash": model_hash(cloud_model),
      "num_shared": m,
      "input_shape": list(cloud_model.input_shape[1:]),
      "num_classes": int(cloud_model.output_shape[-1]),
      "layers": [_layer_record(layer) for layer in lower],
      "head": [_layer_record(layer) for layer in head],
  }
  # weights.npz as np.savez writes it (one .npy per array, stored), but with
  # fixed entry times, as the outer archive's: the same layers always give
  # the same bytes (and payload_digest), whenever they are exported.
  weights = io.BytesIO()
  with zipfile.ZipFile(weights, "w", zipfile.ZIP_STORED) as npz:
    for layer in lower:
      for i, w in enumerate(layer.get_weights()):
        array = io.BytesIO()
        np.lib.format.write_array(array, np.asarray(w), allow_pickle=False)
        _write_entry(npz, f"{layer.name}/{i}.npy", array.getvalue(),
                     zipfile.ZIP_STORED)
  out = io.BytesIO()
  with zipfile.ZipFile(out, "w") as zf:
    _write_entry(zf, "manifest.json",
                 json.dumps(manifest, sort_keys=True).encode(),
                 zipfile.ZIP_DEFLATED)
    _write_entry(zf, "weights.npz", weights.getvalue(), zipfile.ZIP_DEFLATED)
  return out.getvalue()


def _write_entry(zf: zipfile.ZipFile, name: str, data: bytes,
                 compression: int) -> None:
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = compression
  info.external_attr = 0o644 << 16
  zf.writestr(info, data)


def payload_digest(payload: bytes) -> str:
  """sha256 hex digest of payload bytes, for checking them after transfer."""
  return hashlib.sha256(payload).hexdigest()


class PayloadError(ValueError):
  """A shared-layers payload is malformed or not what was expected."""


def read_payload(payload: bytes) -> tuple[dict, dict[str, np.ndarray]]:
  """Parses a shared-layers payload into (manifest, weights) without building.

  Raises:
    PayloadError: if the bytes are not a payload of a known format.
  """
  try:
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
      manifest = json.loads(zf.read("manifest.json"))
      with np.load(io.BytesIO(zf.read("weights.npz")),
                   allow_pickle=False) as npz:
        weights = {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
    raise PayloadError(f"Not a shared-layers payload ({PAYLOAD_FORMAT}): {e}. "
                       f"Received {len(payload)} bytes.") from e
  if not isinstance(manifest, dict) or manifest.get("format") != PAYLOAD_FORMAT:
    got = manifest.get("format") if isinstance(manifest, dict) else manifest
    raise PayloadError(f"Unknown payload format {got!r}; expected "
                       f"{PAYLOAD_FORMAT!r}.")
  for record in manifest["layers"] + manifest["head"]:
    if record.get("class_name") not in _PAYLOAD_LAYERS:
      raise PayloadError(f"Payload names layer class {record.get('class_name')!r};"
                         f" only {sorted(_PAYLOAD_LAYERS)} are allowed.")
  return manifest, weights


def payloads_cloud_hash(payloads: Mapping[int, bytes], where: str = "") -> str:
  """The content hash of the CloudCNN that payloads (by m) were exported from.

  Raises:
    PayloadError: if a payload is malformed or they come from different
      CloudCNNs (``where`` names their source in the message).
  """
  hashes = {m: read_payload(p)[0]["cloud_model_hash"]
            for m, p in payloads.items()}
  if len(set(hashes.values())) != 1:
    raise PayloadError(
        f"The payloads{f' in {where}' if where else ''} come from different "
        f"CloudCNNs (content hashes by m: "
        f"{ {m: h[:12] for m, h in sorted(hashes.items())} }).")
  return next(iter(hashes.values()))


def _rebuild(record: dict, *, initializer=None, units: int | None = None,
             trainable: bool = True) -> keras.layers.Layer:
  config = dict(record["config"])
  if initializer is not None and "kernel_initializer" in config:
    config["kernel_initializer"] = initializer
  if units is not None:
    config["units"] = units
  config["trainable"] = trainable
  if config.get("name") == "predictions":
    config["dtype"] = "float32"  # as in _head_layers
  return _PAYLOAD_LAYERS[record["class_name"]](**{
      k: v for k, v in config.items() if k != "name"}, name=config["name"])


def build_edge_cnn_from_payload(payload: bytes, num_classes: int | None = None,
                                *, pretrained: bool = True,
                                kernel_initializer: str = "he_normal",
                                seed: int | None = None,
                                name: str | None = None,
                                head_pool: str | None = None,
                                train_shared: bool = False) -> keras.Model:
  """Builds EdgeCNN-m from a shared-layers payload alone (Alg. 1, steps 2-3).

  Args:
    payload: bytes from export_shared_layers.
    num_classes: classes of the edge's softmax; defaults to the cloud's.
    pretrained: True builds EdgeCNN1 (the m lower layers carry the cloud's
      weights and are frozen); False builds EdgeCNN0 (same architecture,
      random initialisation, everything trainable).
    kernel_initializer: initialiser of the fresh ReLU layers.
    seed: makes the fresh weights reproducible.
    name: model name; defaults to "edge_cnn{0|1}_{m}".
    head_pool: None keeps the cloud's head pool (Alg. 1: the head has the
      cloud's shape); "paper" or "compact" uses that preset's head pool
      instead (stride 1 'valid', or stride 2 'same'), an ablation of how much
      the head's size matters: at m=3 on 24x24 crops the paper's FC-1024 sees
      23x23x32 features, the compact preset's 12x12x32.
    train_shared: with ``pretrained``, the m lower layers start at the cloud's
      weights and train with the head (fine-tuning) instead of staying frozen
      as Alg. 1 and 2 have them: an ablation of the freezing, not the
      paper's EdgeCNN1. The model's ``transferred_weights`` then keeps the
      cloud's values, by layer name, for train.reinitialize.

  Returns:
    An uncompiled keras.Model; its ``cloud_model_hash`` attribute names the
    cloud model the layers came from.
  """
  if head_pool is not None:
    _check_choice("head_pool", head_pool, PRESETS)
  if train_shared and not pretrained:
    raise ValueError("`train_shared` needs `pretrained=True`: EdgeCNN0 "
                     "(pretrained=False) trains every layer already. "
                     f"Received: pretrained={pretrained!r}, "
                     f"train_shared={train_shared!r}")
  manifest, weights = read_payload(payload)
  m = manifest["num_shared"]
  classes = manifest["num_classes"] if num_classes is None else num_classes
  if classes < 2:
    raise ValueError(f"`num_classes` must be >= 2. Received: num_classes={classes}")
  inputs = keras.Input(shape=tuple(manifest["input_shape"]), name="image")
  x = inputs
  built = []
  for index, record in enumerate(manifest["layers"]):
    layer = _rebuild(
        record, trainable=not pretrained or train_shared,
        initializer=None if pretrained else _initializer(kernel_initializer,
                                                         seed, index))
    x = layer(x)
    built.append(layer)
  for index, record in enumerate(manifest["head"]):
    is_output = record["config"]["name"] == "predictions"
    init = None
    if "kernel_initializer" in record["config"]:
      init = _initializer("glorot_uniform" if is_output else kernel_initializer,
                          seed, 100 + index)
    if head_pool is not None and record["config"]["name"] == "head_pool":
      spec = _PRESET_SPECS[head_pool]
      record = {**record, "config": {
          **record["config"], "strides": [spec.head_pool_strides] * 2,
          "padding": spec.head_pool_padding}}
    x = _rebuild(record, initializer=init,
                 units=classes if is_output else None)(x)
  model = keras.Model(
      inputs, x, name=name or f"edge_cnn{int(bool(pretrained))}_{m}")
  if pretrained:
    for layer in built:
      n = len(layer.weights)
      try:
        layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(n)])
      except (KeyError, ValueError) as e:
        raise PayloadError(f"Payload weights do not fit layer {layer.name!r}: "
                           f"{e}") from e
  if pretrained and train_shared:
    model.transferred_weights = {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in built if layer.weights}
  model.cloud_model_hash = manifest["cloud_model_hash"]
  model.num_shared = m
  model.pretrained = bool(pretrained)
  return model


def build_edge_cnn(cloud_model: keras.Model, num_shared: int,
                   num_classes: int | None = None, *, pretrained: bool = True,
                   kernel_initializer: str = "he_normal",
                   seed: int | None = None,
                   name: str | None = None) -> keras.Model:
  """Builds EdgeCNN-m from a CloudCNN (Sec. 3.2.1, Alg. 1).

  The edge model is rebuilt from the shared-layers payload, exactly as an
  edge server would, so it never shares layer objects with ``cloud_model``:
  training or freezing one leaves the other untouched.

  Args:
    cloud_model: a model from build_cloud_cnn.
    num_shared: m, the number of lower conv layers taken, in 1..15. For the
      compact preset the group pools that lie between them come along.
    num_classes: classes of the edge's softmax; defaults to the cloud's.
    pretrained: EdgeCNN1 (True) or EdgeCNN0 (False); see
      build_edge_cnn_from_payload.
    kernel_initializer: initialiser of the fresh ReLU layers.
    seed: makes the fresh weights reproducible.
    name: model name.

  Returns:
    An uncompiled keras.Model.
  """
  return build_edge_cnn_from_payload(
      export_shared_layers(cloud_model, num_shared), num_classes,
      pretrained=pretrained, kernel_initializer=kernel_initializer, seed=seed,
      name=name)


def shared_layer_names(model: keras.Model) -> list[str]:
  """Names of a model's conv and group-pool layers before its head."""
  return [layer.name for layer in model.layers
          if layer.name.startswith("block")]


def count_params(model: keras.Model) -> tuple[int, int]:
  """Returns (trainable, frozen) parameter counts of a model."""
  trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
  return trainable, frozen

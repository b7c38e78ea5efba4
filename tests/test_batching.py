"""Server-side dynamic batching: concurrent calls share forward passes and
each gets exactly its own rows; a swap never splits a batch."""

import threading

import numpy as np
import pytest

from edgecnn import models
from edgecnn import serving


def test_concurrent_requests_are_batched_and_answered_correctly():
  model = models.build_cloud_cnn((12, 12, 1), preset="compact", seed=0)
  slot = serving.ModelSlot()
  slot.swap(model, 1)
  batcher = serving.DynamicBatcher(slot, max_batch=32, max_wait_s=0.02)
  rng = np.random.default_rng(0)
  inputs = [rng.random((1 + i % 3, 12, 12, 1), dtype=np.float32)
            for i in range(24)]
  outputs = [None] * len(inputs)

  def call(i):
    outputs[i] = batcher.predict(inputs[i])

  threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  batcher.stop()
  direct = slot.current().predict
  for x, (probs, version) in zip(inputs, outputs):
    assert version == 1
    np.testing.assert_allclose(probs, direct(x), atol=1e-5)
  assert batcher.rows == sum(len(x) for x in inputs)
  assert batcher.batches < len(inputs)  # some calls shared a forward pass


def test_errors_reach_every_caller_and_batcher_survives():
  slot = serving.ModelSlot()
  batcher = serving.DynamicBatcher(slot, max_batch=4, max_wait_s=0.0)
  with pytest.raises(serving.RequestError, match="No model"):
    batcher.predict(np.zeros((1, 12, 12, 1), np.float32))
  slot.swap(models.build_cloud_cnn((12, 12, 1), preset="compact", seed=0), 3)
  probs, version = batcher.predict(np.zeros((2, 12, 12, 1), np.float32))
  assert probs.shape == (2, 10) and version == 3
  batcher.stop()


def test_bad_arguments():
  with pytest.raises(ValueError, match="max_batch"):
    serving.DynamicBatcher(serving.ModelSlot(), max_batch=0)

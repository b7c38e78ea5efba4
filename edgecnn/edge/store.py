"""The edge's durable object store: SQLite in WAL mode.

Every accepted upload is one row holding its pre-processed tensor (the
"object" of Alg. 2) and a state::

  pending -> sent -> labelled -> used (by model version k)

``add_object`` commits (synchronous=FULL) before it returns, so an upload
that was answered is on disk. Objects stuck in ``sent`` (the edge died while
the cloud was labelling them) go back to ``pending`` on open.
"""

from __future__ import annotations

import json
import pathlib
import re
import sqlite3
import threading
import time
import uuid
from typing import Iterable, Sequence

import numpy as np

STATES = ("pending", "sent", "labelled", "used")
OBJECT_ID = re.compile(r"^[0-9a-f]{32}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
  id TEXT PRIMARY KEY,
  created REAL NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'labelled', 'used')),
  tensor BLOB NOT NULL,
  raw_bytes INTEGER NOT NULL,
  predicted INTEGER,
  predicted_version INTEGER,
  label INTEGER,
  used_version INTEGER,
  sent_at REAL,
  labelled_at REAL
);
CREATE INDEX IF NOT EXISTS objects_state ON objects (state, created);
CREATE TABLE IF NOT EXISTS versions (
  version INTEGER PRIMARY KEY,
  created REAL NOT NULL,
  deployed INTEGER NOT NULL,
  val_accuracy REAL,
  num_labels INTEGER NOT NULL,
  num_cloud_labels INTEGER NOT NULL,
  reason TEXT NOT NULL,
  info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
  name TEXT PRIMARY KEY,
  value REAL NOT NULL
);
"""


def new_object_id() -> str:
  return uuid.uuid4().hex


class Store:
  """Thread-safe access to the edge's SQLite database.

  Args:
    path: the database file.
    image_shape: (H, W, C) of the stored uint8 objects.
  """

  def __init__(self, path: str | pathlib.Path, image_shape: Sequence[int]):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.image_shape = tuple(image_shape)
    self._lock = threading.RLock()
    self._db = sqlite3.connect(self.path, check_same_thread=False,
                               isolation_level=None)
    self._db.execute("PRAGMA journal_mode=WAL")
    self._db.execute("PRAGMA synchronous=FULL")
    self._db.executescript(_SCHEMA)
    with self._lock:
      self._db.execute("UPDATE objects SET state='pending', sent_at=NULL "
                       "WHERE state='sent'")

  def close(self) -> None:
    with self._lock:
      self._db.close()

  def _tx(self):
    return _Transaction(self._db, self._lock)

  # -- uploads --------------------------------------------------------------------
  def add_object(self, object_id: str, tensor: np.ndarray, raw_bytes: int,
                 predicted: int, version: int) -> None:
    """Stores an accepted upload durably (committed when this returns)."""
    if tensor.shape != self.image_shape or tensor.dtype != np.uint8:
      raise ValueError(f"Object tensor must be uint8 {self.image_shape}; got "
                       f"{tensor.dtype} {tensor.shape}.")
    with self._tx() as db:
      db.execute("INSERT INTO objects (id, created, state, tensor, raw_bytes, "
                 "predicted, predicted_version) VALUES (?, ?, 'pending', ?, ?, "
                 "?, ?)", (object_id, time.time(), tensor.tobytes(), raw_bytes,
                           int(predicted), int(version)))

  def take_pending(self, limit: int) -> tuple[list[str], np.ndarray]:
    """Marks up to ``limit`` oldest pending objects as sent and returns them."""
    with self._tx() as db:
      rows = db.execute("SELECT id, tensor FROM objects WHERE state='pending' "
                        "ORDER BY created LIMIT ?", (limit,)).fetchall()
      now = time.time()
      db.executemany("UPDATE objects SET state='sent', sent_at=? WHERE id=?",
                     [(now, r[0]) for r in rows])
    ids = [r[0] for r in rows]
    tensors = np.stack([np.frombuffer(r[1], np.uint8).reshape(self.image_shape)
                        for r in rows]) if rows else np.zeros(
                            (0, *self.image_shape), np.uint8)
    return ids, tensors

  def return_to_pending(self, ids: Iterable[str]) -> None:
    with self._tx() as db:
      db.executemany("UPDATE objects SET state='pending', sent_at=NULL "
                     "WHERE id=? AND state='sent'", [(i,) for i in ids])

  def set_labels(self, labels: dict[str, int], num_classes: int) -> int:
    """Stores cloud labels for objects in state 'sent'.

    All-or-nothing: if any id was not sent or any label is out of range,
    nothing is stored and ValueError names the problem.

    Returns:
      The number of objects labelled.
    """
    for object_id, label in labels.items():
      if not isinstance(object_id, str) or not OBJECT_ID.match(object_id):
        raise ValueError(f"Malformed object id {object_id!r} in labels.")
      if isinstance(label, bool) or not isinstance(label, int) or \
          not 0 <= label < num_classes:
        raise ValueError(f"Label {label!r} for {object_id} is not a class "
                         f"index in 0..{num_classes - 1}.")
    with self._tx() as db:
      marks = ",".join("?" * len(labels))
      sent = {r[0] for r in db.execute(
          f"SELECT id FROM objects WHERE state='sent' AND id IN ({marks})",
          list(labels))} if labels else set()
      unknown = set(labels) - sent
      if unknown:
        raise ValueError(f"Labels for {len(unknown)} objects that were not "
                         f"sent for labelling, e.g. {sorted(unknown)[:3]}.")
      now = time.time()
      db.executemany("UPDATE objects SET state='labelled', label=?, "
                     "labelled_at=? WHERE id=?",
                     [(int(l), now, i) for i, l in labels.items()])
    return len(labels)

  def labelled(self) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All objects with a cloud label (labelled or used): ids, tensors, labels."""
    with self._lock:
      rows = self._db.execute(
          "SELECT id, tensor, label FROM objects WHERE state IN "
          "('labelled', 'used') ORDER BY labelled_at, id").fetchall()
    if not rows:
      return [], np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int64)
    return ([r[0] for r in rows],
            np.stack([np.frombuffer(r[1], np.uint8).reshape(self.image_shape)
                      for r in rows]),
            np.array([r[2] for r in rows], np.int64))

  def mark_used(self, ids: Sequence[str], version: int) -> None:
    with self._tx() as db:
      db.executemany("UPDATE objects SET state='used', used_version=? "
                     "WHERE id=? AND state IN ('labelled', 'used')",
                     [(version, i) for i in ids])

  def counts(self) -> dict[str, int]:
    with self._lock:
      rows = dict(self._db.execute(
          "SELECT state, COUNT(*) FROM objects GROUP BY state").fetchall())
    return {s: int(rows.get(s, 0)) for s in STATES}

  def count_all(self) -> int:
    with self._lock:
      return int(self._db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

  def compact_used(self) -> int:
    """Deletes objects already used by a deployed model version.

    They no longer count against the quota, and later retrains no longer see
    them (the versions that used them keep what they learnt).

    Returns:
      The number of objects deleted.
    """
    with self._tx() as db:
      n = db.execute("DELETE FROM objects WHERE state='used'").rowcount
    with self._lock:
      self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return int(n)

  def object_state(self, object_id: str) -> dict | None:
    with self._lock:
      row = self._db.execute(
          "SELECT state, predicted, predicted_version, label, used_version "
          "FROM objects WHERE id=?", (object_id,)).fetchone()
    if row is None:
      return None
    return dict(zip(("state", "predicted", "predicted_version", "label",
                     "used_version"), row))

  def all_ids(self) -> list[str]:
    with self._lock:
      return [r[0] for r in self._db.execute("SELECT id FROM objects")]

  def last_upload(self) -> float | None:
    with self._lock:
      row = self._db.execute("SELECT MAX(created) FROM objects").fetchone()
    return row[0]

  # -- versions -----------------------------------------------------------------------
  def add_version(self, version: int, *, deployed: bool, val_accuracy: float,
                  num_labels: int, num_cloud_labels: int, reason: str,
                  info: dict) -> None:
    with self._tx() as db:
      db.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (version, time.time(), int(deployed), val_accuracy,
                  num_labels, num_cloud_labels, reason, json.dumps(info)))

  def versions(self) -> list[dict]:
    with self._lock:
      rows = self._db.execute("SELECT * FROM versions ORDER BY version").fetchall()
    keys = ("version", "created", "deployed", "val_accuracy", "num_labels",
            "num_cloud_labels", "reason", "info")
    out = []
    for row in rows:
      record = dict(zip(keys, row))
      record["deployed"] = bool(record["deployed"])
      record["info"] = json.loads(record["info"])
      out.append(record)
    return out

  # -- counters ----------------------------------------------------------------------
  def add_counter(self, name: str, amount: float) -> None:
    with self._tx() as db:
      db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO "
                 "UPDATE SET value = value + excluded.value", (name, amount))

  def set_counter(self, name: str, value: float) -> None:
    with self._tx() as db:
      db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, value))

  def counters(self) -> dict[str, float]:
    with self._lock:
      return dict(self._db.execute("SELECT name, value FROM counters"))


class _Transaction:
  def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
    self.db, self.lock = db, lock

  def __enter__(self) -> sqlite3.Connection:
    self.lock.acquire()
    self.db.execute("BEGIN IMMEDIATE")
    return self.db

  def __exit__(self, exc_type, exc, tb):
    try:
      self.db.execute("ROLLBACK" if exc_type else "COMMIT")
    finally:
      self.lock.release()
    return False

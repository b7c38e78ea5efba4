"""Long-format result CSVs that survive interruption, and run metadata.

Every measured value is one row (STYLE habit 4). A run's rows are appended
in one write on an O_APPEND descriptor and fsynced, so a killed sweep loses at
most the run in progress; ``ResultLog.done`` lets a rerun skip finished runs.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pathlib
import subprocess
from typing import Any, Iterable, Mapping

import pandas as pd

COLUMNS = ("experiment", "dataset", "preset", "model", "num_shared",
           "pretrained", "labels", "num_images", "seed", "condition", "metric",
           "value", "unit", "device", "threads", "commit", "timestamp")
# `condition` holds what else identifies a measurement, as k=v;k=v (for
# example "link=lte;size_kb=512;emulation=proxy"); empty for most rows.
KEY_COLUMNS = ("experiment", "dataset", "preset", "model", "num_shared",
               "pretrained", "labels", "num_images", "seed", "condition")


def git_commit(path: str | os.PathLike = ".") -> str:
  """Short commit of the checkout holding ``path`` ('-dirty' if modified),
  or 'unknown' outside git."""
  try:
    cwd = pathlib.Path(path).resolve()
    cwd = cwd if cwd.is_dir() else cwd.parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd,
                            capture_output=True, text=True, check=True,
                            timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "edgecnn",
                            "experiments"], cwd=cwd, capture_output=True,
                           text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def key_text(value: Any) -> str:
  """A key column's value as the CSV holds it (None and NaN: empty)."""
  if value is None or (isinstance(value, float) and value != value):
    return ""
  return str(value)


class ResultLog:
  """Appends result rows to a long-format CSV and answers what is done.

  Args:
    path: the CSV file (created with a header on first write).
    common: values shared by every row (device, threads, commit, ...).
  """

  def __init__(self, path: str | os.PathLike, common: Mapping[str, Any]):
    self.path = pathlib.Path(path)
    unknown = set(common) - set(COLUMNS)
    if unknown:
      raise ValueError(f"Unknown result columns {sorted(unknown)}; the schema "
                       f"is {list(COLUMNS)}")
    self.common = dict(common)
    self._done: set[tuple[str, ...]] | None = None

  def read(self) -> pd.DataFrame:
    """All complete rows so far (a row cut short by a kill is dropped)."""
    if not self.path.exists() or self.path.stat().st_size == 0:
      return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(self.path, dtype=str, keep_default_na=False,
                        on_bad_lines="skip")
    if tuple(frame.columns) != COLUMNS:
      raise ValueError(f"{self.path} has columns {list(frame.columns)}, not "
                       f"this version's schema {list(COLUMNS)}; migrate it "
                       "(edgecnn.results.migrate) or write to another file.")
    return frame[frame["timestamp"] != ""]

  def _keys(self) -> set[tuple[str, ...]]:
    if self._done is None:
      frame = self.read()
      self._done = {tuple(row) for row in
                    frame[list(KEY_COLUMNS)].itertuples(index=False)}
    return self._done

  def done(self, key: Mapping[str, Any]) -> bool:
    """Whether rows with these key columns are already in the file."""
    full = {**self.common, **key}
    return tuple(key_text(full.get(c)) for c in KEY_COLUMNS) in self._keys()

  def append(self, key: Mapping[str, Any],
             metrics: Iterable[tuple[str, Any, str]]) -> pd.DataFrame:
    """Appends one row per (metric, value, unit) for a finished run."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")
    rows = [{**self.common, **key, "metric": m, "value": v, "unit": u,
             "timestamp": stamp} for m, v, u in metrics]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    self.path.parent.mkdir(parents=True, exist_ok=True)
    new = not self.path.exists() or self.path.stat().st_size == 0
    if not new:
      self.read()  # refuses a file of another schema before appending
    buf = io.StringIO()
    frame.to_csv(buf, header=new, index=False)
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, buf.getvalue().encode())
      os.fsync(fd)
    finally:
      os.close(fd)
    self._keys().add(tuple(key_text({**self.common, **key}.get(c))
                           for c in KEY_COLUMNS))
    return frame


def write_metadata(path: str | os.PathLike, values: Mapping[str, Any]) -> None:
  """Writes the flags (or config) of a run as JSON next to its results."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(dict(values), indent=2, sort_keys=True,
                            default=str) + "\n")
  os.replace(tmp, path)


def migrate(path: str | os.PathLike) -> bool:
  """Rewrites a CSV of an older schema (missing columns become empty).

  Returns:
    Whether the file was rewritten.
  """
  path = pathlib.Path(path)
  frame = pd.read_csv(path, dtype=str, keep_default_na=False)
  if tuple(frame.columns) == COLUMNS:
    return False
  unknown = set(frame.columns) - set(COLUMNS)
  if unknown:
    raise ValueError(f"{path} has columns {sorted(unknown)} this schema lacks.")
  for col in COLUMNS:
    if col not in frame:
      frame[col] = ""
  tmp = path.with_suffix(path.suffix + ".tmp")
  frame[list(COLUMNS)].to_csv(tmp, index=False)
  os.replace(tmp, path)
  return True

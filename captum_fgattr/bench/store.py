"""Durable per-image results: one SQLite file per run folder, resumable, safe for concurrent ranks.

Schema (``results.sqlite``)::

    meta(key PK, value)                        fingerprints: settings that change the numbers (metrics, model, data)
                                               and the sha256 of input contents (checkpoint, SAEs)
    invocations(id PK, command, started, config)  resolved configuration of every command run
    methods(method_key PK, name, params, label)   MethodSpec.key -> its name / JSON params / label
    experiment_methods(experiment, split, method_key, label, position)   PK (experiment, split, method_key)
    experiment_images(experiment, split, image_id)                       PK (all three)
    results(split, method_key, image_id, image_name, label, prediction, target, n_patches, created)
                                                                       PK (split, method_key, image_id)
    scores(split, method_key, image_id, metric, value)                 PK (split, method_key, image_id, metric)
                                               one row per registered metric (metric_specs); value NULL = NaN
    convergence_deltas(split, method_key, image_id, delta)             Integrated Gradients' completeness gaps
    attributions(split, method_key, image_id, grid_h, grid_w, attr)    raw float32 patch maps (gallery)
    images(split, image_id, height, width, channels, pixels)           uint8 display copies (gallery)
    selections(name PK, experiment, method_key, rule, details)         configs chosen on validation
    experiment_results  VIEW: results and scores joined with experiment_methods (one row per experiment, image
                        and metric)

A method's score on an image does not depend on the experiment that asked for it, so results are keyed
by (split, method_key, image_id) and shared between experiments (e.g. TransMM on the validation set is
computed once for the layer sweep, the multi-layer configurations and the κ × c_max grid).

Writes go through ``BEGIN IMMEDIATE`` transactions (one per batch) with WAL journaling and a busy
timeout, so several ``torchrun`` ranks can write into the same file; a killed process loses at most its
open transaction. NaN scores are stored as NULL and read back as NaN.

``meta`` holds the schema version (:data:`SCHEMA_VERSION`); a store of another version (or one with results but
no recorded version: version 1, the scores as columns of ``results``) is refused.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from captum_fgattr.bench.methods import FGParams, MethodSpec
from captum_fgattr.bench.metrics import METRICS, metric_names

__all__ = ["STORE_NAME", "SCHEMA_VERSION", "ResultRow", "Selection", "ResultStore", "StoreError"]

STORE_NAME = "results.sqlite"
#: version of the schema below, kept in ``meta`` under "schema_version" (version 1: scores as columns of results)
SCHEMA_VERSION = 2
#: how long a writer waits for another process's transaction before the store is reported locked
LOCK_TIMEOUT_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, started TEXT NOT NULL, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS methods (
    method_key TEXT PRIMARY KEY, name TEXT NOT NULL, params TEXT NOT NULL, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiment_methods (
    experiment TEXT NOT NULL, split TEXT NOT NULL, method_key TEXT NOT NULL REFERENCES methods(method_key),
    label TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (experiment, split, method_key));
CREATE TABLE IF NOT EXISTS experiment_images (
    experiment TEXT NOT NULL, split TEXT NOT NULL, image_id INTEGER NOT NULL,
    PRIMARY KEY (experiment, split, image_id));
CREATE TABLE IF NOT EXISTS results (
    split TEXT NOT NULL, method_key TEXT NOT NULL REFERENCES methods(method_key), image_id INTEGER NOT NULL,
    image_name TEXT NOT NULL, label INTEGER NOT NULL, prediction INTEGER NOT NULL, target INTEGER NOT NULL,
    n_patches INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (split, method_key, image_id));
CREATE TABLE IF NOT EXISTS scores (
    split TEXT NOT NULL, method_key TEXT NOT NULL, image_id INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (split, method_key, image_id, metric),
    FOREIGN KEY (split, method_key, image_id) REFERENCES results(split, method_key, image_id));
CREATE TABLE IF NOT EXISTS attributions (
    split TEXT NOT NULL, method_key TEXT NOT NULL, image_id INTEGER NOT NULL,
    grid_h INTEGER NOT NULL, grid_w INTEGER NOT NULL, attr BLOB NOT NULL,
    PRIMARY KEY (split, method_key, image_id));
CREATE TABLE IF NOT EXISTS convergence_deltas (
    split TEXT NOT NULL, method_key TEXT NOT NULL, image_id INTEGER NOT NULL, delta REAL NOT NULL,
    PRIMARY KEY (split, method_key, image_id));
CREATE TABLE IF NOT EXISTS images (
    split TEXT NOT NULL, image_id INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    channels INTEGER NOT NULL, pixels BLOB NOT NULL, PRIMARY KEY (split, image_id));
CREATE TABLE IF NOT EXISTS selections (
    name TEXT PRIMARY KEY, experiment TEXT NOT NULL, method_key TEXT NOT NULL, rule TEXT NOT NULL,
    details TEXT NOT NULL);
CREATE VIEW IF NOT EXISTS experiment_results AS
    SELECT em.experiment, r.split, r.method_key, em.label AS method_label, r.image_id, r.image_name, r.label,
           r.prediction, r.target, r.n_patches, s.metric, s.value
    FROM experiment_methods em
    JOIN experiment_images ei ON ei.experiment = em.experiment AND ei.split = em.split
    JOIN results r ON r.split = em.split AND r.method_key = em.method_key AND r.image_id = ei.image_id
    JOIN scores s ON s.split = r.split AND s.method_key = r.method_key AND s.image_id = r.image_id;
"""


class StoreError(RuntimeError):
    """The results file cannot be used (corrupt, locked, a folder in its place, not writable, no run folder);
    the message names the path and the way out."""


def _store_error(path: Path, err: sqlite3.Error) -> StoreError:
    """Translate SQLite's error about ``path`` into a :class:`StoreError` saying what to do."""
    text = str(err)
    if "locked" in text or "busy" in text:
        return StoreError(f"{path} is locked by another process (another fgattr command on this run folder?); "
                          "wait for it to finish, or use another --run-dir")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"{path} is not a readable SQLite results file ({text}): it is corrupt or another kind of "
                          "file; move it away to start a new store, or use another --run-dir")
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"cannot open {path} for writing ({text}); check that you may write to {path.parent}, "
                          "or use another --run-dir")
    return StoreError(f"{path}: {text}")


def _make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and parents); a regular file or permissions in the way raise :class:`StoreError`."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), run_dir)
        raise StoreError(f"cannot create run folder {run_dir}: {blocker} is a regular file, not a folder; "
                         "choose another --run-dir") from err
    except OSError as err:
        raise StoreError(f"cannot create run folder {run_dir} ({err.strerror}: {err.filename}); choose a folder you "
                         "may write to (--run-dir)") from err


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _nullable(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class ResultRow:
    """Scores of one method on one image."""

    split: str  # dataset split, e.g. "val" / "test"
    method_key: str  # MethodSpec.key
    image_id: int  # index of the image in its split's dataset
    image_name: str  # file path relative to the split root, or the id as text
    label: int  # ground-truth class
    prediction: int  # model's predicted class
    target: int  # class explained and scored
    scores: Mapping[str, float]  # metric name -> score (NaN when undefined), e.g. {"saco": …, "fc": …, "pf_auc": …}
    n_patches: int


@dataclass(frozen=True)
class Selection:
    """A configuration chosen on validation data."""

    name: str  # e.g. "single_layer"
    experiment: str  # experiment it was chosen from
    method_key: str  # MethodSpec.key of the chosen configuration
    rule: str  # human-readable selection rule
    details: Mapping[str, Any]  # scores of every candidate, the chosen spec, ...

    @property
    def chosen(self) -> FGParams:
        """The chosen FG-TransMM configuration, typed."""
        return FGParams.from_params(self.details["chosen"]["params"])


class ResultStore:
    """SQLite store of a run folder; use as a context manager (``with ResultStore(run_dir) as store``).

    Args:
        run_dir: run folder; created if missing; the database is ``run_dir / STORE_NAME``.
        timeout_s: how long a writer waits for another rank's transaction (default :data:`LOCK_TIMEOUT_S`).

    Raises:
        StoreError: the run folder cannot be created, or the results file is corrupt, locked, a folder or
            not writable (the message names the path and what to do).
    """

    def __init__(self, run_dir: str | Path, timeout_s: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STORE_NAME
        timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
        _make_run_dir(self.run_dir)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not the SQLite results file; move it away, or use another --run-dir")
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        except sqlite3.Error as err:
            raise _store_error(self.path, err) from err
        try:
            self._setup(timeout_s)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, timeout_s: float) -> None:
        """Pragmas (busy timeout, WAL) and the schema; SQLite errors become :class:`StoreError`."""
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._enable_wal(timeout_s)
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._write() as conn:
                version = self._schema_version()
                if version not in (None, str(SCHEMA_VERSION)):
                    raise StoreError(
                        f"{self.path} holds results of store schema version {version}; this fgattr reads version "
                        f"{SCHEMA_VERSION} only: re-run in a new folder (another --run-dir), or read it with the "
                        "fgattr that wrote it")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as err:
            raise _store_error(self.path, err) from err

    def _schema_version(self) -> str | None:
        """The stored schema version: ``meta``'s, else "1" if results exist (stores written before versions were
        recorded), else None (a new file)."""
        tables = {name for name, in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None:
                return row[0]
        return "1" if "results" in tables else None

    def _enable_wal(self, timeout_s: float) -> None:
        """Switch to WAL. The switch needs an exclusive lock and SQLite answers "database is locked" at
        once (no busy handler) while another rank opens the same new file, so retry until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with the write lock up front (no upgrade deadlocks between ranks)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise _store_error(self.path, err) from err
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- run metadata ------------------------------------------------------------------------------
    def _stored_or_record(self, name: str, value: str) -> str | None:
        """The JSON text stored in ``meta`` under ``name``; None after recording ``value`` there (none was)."""
        with self._write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
        return None if row is None else row[0]

    def check_fingerprint(self, fingerprint: Mapping[str, Any], name: str = "fingerprint") -> None:
        """Record settings that determine the numbers under ``name``; a later run with different ones raises.

        Raises:
            ValueError: the folder holds results computed with other settings (names the differing keys).
        """
        value = json.dumps(fingerprint, sort_keys=True)
        row = self._stored_or_record(name, value)
        if row is None:
            return
        stored = json.loads(row)
        if stored != json.loads(value):
            keys = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ValueError(
                f"run folder {self.run_dir} holds results computed with different settings for {keys}: "
                f"stored {[stored.get(k) for k in keys]}, requested {[fingerprint.get(k) for k in keys]}; "
                "use a new run folder or the stored settings"
            )

    def check_content(self, name: str, sha256: str, what: str) -> None:
        """Record the sha256 of an input's contents (e.g. a checkpoint, an SAE) under ``name``; a later run whose
        input has other contents raises. ``what`` names the input in the error (e.g. "the checkpoint w.pt").

        Raises:
            ValueError: the folder's results were computed from other contents.
        """
        row = self._stored_or_record(name, json.dumps({"sha256": sha256}))
        stored = None if row is None else json.loads(row)["sha256"]
        if stored is not None and stored != sha256:
            raise ValueError(f"{what} changed since the results in {self.run_dir} were computed (sha256 "
                             f"{sha256[:12]}... now vs {stored[:12]}... then); use a new --run-dir")

    def log_invocation(self, command: str, config: Mapping[str, Any]) -> None:
        """Store the resolved configuration of a command run in this folder."""
        with self._write() as conn:
            conn.execute("INSERT INTO invocations (command, started, config) VALUES (?, ?, ?)",
                         (command, _now(), json.dumps(config, sort_keys=True, default=str)))

    def invocations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(command, start time, resolved configuration) of every command run, oldest first."""
        rows = self._conn.execute("SELECT command, started, config FROM invocations ORDER BY id").fetchall()
        return [(command, started, json.loads(config)) for command, started, config in rows]

    # -- experiments and methods -------------------------------------------------------------------
    def register_experiment(self, experiment: str, split: str, specs: Sequence[MethodSpec],
                            image_ids: Sequence[int]) -> None:
        """Declare the methods (in table order) and image ids of ``experiment`` on ``split``; idempotent."""
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO experiment_images VALUES (?, ?, ?)",
                             [(experiment, split, int(i)) for i in image_ids])
            offset = conn.execute("SELECT COUNT(*) FROM experiment_methods WHERE experiment = ? AND split = ?",
                                  (experiment, split)).fetchone()[0]
            for position, spec in enumerate(specs, start=offset):
                conn.execute("INSERT OR IGNORE INTO methods VALUES (?, ?, ?, ?)",
                             (spec.key, spec.name, json.dumps(spec.params, sort_keys=True), spec.label))
                conn.execute("INSERT OR IGNORE INTO experiment_methods VALUES (?, ?, ?, ?, ?)",
                             (experiment, split, spec.key, spec.label, position))

    def experiments(self) -> list[tuple[str, str]]:
        """(experiment, split) pairs, in the order they were first registered."""
        rows = self._conn.execute(
            "SELECT experiment, split FROM experiment_methods GROUP BY experiment, split ORDER BY MIN(rowid)")
        return [tuple(row) for row in rows.fetchall()]

    def experiment_methods(self, experiment: str, split: str) -> list[MethodSpec]:
        """Methods of an experiment in table order, with the labels they were registered with."""
        rows = self._conn.execute(
            "SELECT m.name, m.params, em.label FROM experiment_methods em JOIN methods m USING (method_key) "
            "WHERE em.experiment = ? AND em.split = ? ORDER BY em.position", (experiment, split)).fetchall()
        return [MethodSpec(name, json.loads(params), label) for name, params, label in rows]

    def experiment_ids(self, experiment: str, split: str) -> list[int]:
        """Sorted image ids of an experiment."""
        rows = self._conn.execute("SELECT image_id FROM experiment_images WHERE experiment = ? AND split = ? "
                                  "ORDER BY image_id", (experiment, split)).fetchall()
        return [row[0] for row in rows]

    # -- per-image results -------------------------------------------------------------------------
    def done_ids(self, split: str, method_key: str, names: Sequence[str] | None = None) -> set[int]:
        """Image ids with a stored score of every metric of ``names`` (default: the metrics every run computes,
        :func:`~captum_fgattr.bench.metrics.metric_names`) for ``method_key`` on ``split``."""
        names = tuple(metric_names() if names is None else names)
        rows = self._conn.execute(
            "SELECT image_id FROM scores WHERE split = ? AND method_key = ? "
            f"AND metric IN ({', '.join('?' * len(names))}) GROUP BY image_id HAVING COUNT(*) = ?",
            (split, method_key, *names, len(names)))
        return {row[0] for row in rows.fetchall()}

    def add_batch(
        self,
        rows: Iterable[ResultRow],
        attributions: Iterable[tuple[str, str, int, np.ndarray]] = (),
        images: Iterable[tuple[str, int, np.ndarray]] = (),
        deltas: Iterable[tuple[str, str, int, float]] = (),
    ) -> int:
        """Commit one batch atomically; rows and scores already stored are kept (no duplicates).

        Args:
            rows: per-image scores.
            attributions: (split, method_key, image_id, (gh, gw) patch map) to keep for figures.
            images: (split, image_id, (H, W, C) uint8 display image) to keep for figures.
            deltas: (split, method_key, image_id, convergence delta) of methods that have one.

        Returns:
            Rows added: rows of which some score was not stored yet (e.g. a newly registered metric's).
        """
        created = _now()
        added = 0
        with self._write() as conn:
            for r in rows:
                before = conn.total_changes
                conn.execute("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (r.split, r.method_key, r.image_id, r.image_name, r.label, r.prediction, r.target,
                              r.n_patches, created))
                conn.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?)",
                                 [(r.split, r.method_key, r.image_id, metric, _nullable(value))
                                  for metric, value in r.scores.items()])
                added += int(conn.total_changes > before)
            conn.executemany("INSERT OR IGNORE INTO convergence_deltas VALUES (?, ?, ?, ?)",
                             [(split, key, image_id, float(delta)) for split, key, image_id, delta in deltas])
            conn.executemany(
                "INSERT OR IGNORE INTO attributions VALUES (?, ?, ?, ?, ?, ?)",
                [(split, key, image_id, *attr.shape, np.ascontiguousarray(attr, dtype=np.float32).tobytes())
                 for split, key, image_id, attr in attributions])
            conn.executemany(
                "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                [(split, image_id, *pixels.shape, np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
                 for split, image_id, pixels in images])
        return added

    def scores(self, split: str, method_key: str, image_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Per-image columns of one method, sorted by image id.

        Returns:
            {"image_id": (n,) int64, "label"/"prediction"/"target": (n,) int64, one (n,) float64 column per
            registered metric in table order (e.g. "saco", "fc", "pf_auc"; NaN where undefined or not computed),
            "n_patches": (n,) int64}; restricted to ``image_ids`` if given.
        """
        rows = self._conn.execute(
            "SELECT image_id, label, prediction, target, n_patches FROM results "
            "WHERE split = ? AND method_key = ? ORDER BY image_id", (split, method_key)).fetchall()
        if image_ids is not None:
            wanted = set(image_ids)
            rows = [row for row in rows if row[0] in wanted]
        columns = list(zip(*rows)) if rows else [()] * 5
        facts = {name: np.array(col, dtype=np.int64)
                 for name, col in zip(("image_id", "label", "prediction", "target", "n_patches"), columns)}
        position = {image_id: i for i, image_id in enumerate(facts["image_id"].tolist())}
        metrics = {name: np.full(len(rows), math.nan) for name in METRICS}  # extra metrics too (NaN if not run)
        for image_id, metric, value in self._conn.execute(
                "SELECT image_id, metric, value FROM scores WHERE split = ? AND method_key = ?", (split, method_key)):
            if metric in metrics and image_id in position and value is not None:
                metrics[metric][position[image_id]] = value
        return {**{k: facts[k] for k in ("image_id", "label", "prediction", "target")}, **metrics,
                "n_patches": facts["n_patches"]}

    def convergence_deltas(self, split: str, method_key: str) -> np.ndarray:
        """(n,) stored convergence deltas of one method (empty for methods without one), by image id."""
        rows = self._conn.execute("SELECT delta FROM convergence_deltas WHERE split = ? AND method_key = ? "
                                  "ORDER BY image_id", (split, method_key)).fetchall()
        return np.array([row[0] for row in rows], dtype=np.float64)

    def count_rows(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    # -- figures -----------------------------------------------------------------------------------
    def attribution(self, split: str, method_key: str, image_id: int) -> np.ndarray | None:
        """Stored (gh, gw) float32 patch map, or None."""
        row = self._conn.execute(
            "SELECT grid_h, grid_w, attr FROM attributions WHERE split = ? AND method_key = ? AND image_id = ?",
            (split, method_key, image_id)).fetchone()
        return None if row is None else np.frombuffer(row[2], dtype=np.float32).reshape(row[0], row[1])

    def attributions(self, split: str, method_key: str) -> dict[int, np.ndarray]:
        """Every stored patch map of one method: image id -> (gh, gw) float32."""
        rows = self._conn.execute("SELECT image_id, grid_h, grid_w, attr FROM attributions WHERE split = ? AND "
                                  "method_key = ? ORDER BY image_id", (split, method_key)).fetchall()
        return {i: np.frombuffer(blob, dtype=np.float32).reshape(h, w) for i, h, w, blob in rows}

    def images(self, split: str) -> dict[int, np.ndarray]:
        """Stored display images of ``split``: image id -> (H, W, C) uint8."""
        rows = self._conn.execute("SELECT image_id, height, width, channels, pixels FROM images WHERE split = ? "
                                  "ORDER BY image_id", (split,)).fetchall()
        return {i: np.frombuffer(px, dtype=np.uint8).reshape(h, w, c) for i, h, w, c, px in rows}

    # -- selections --------------------------------------------------------------------------------
    def set_selection(self, selection: Selection) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO selections VALUES (?, ?, ?, ?, ?)",
                         (selection.name, selection.experiment, selection.method_key, selection.rule,
                          json.dumps(selection.details, sort_keys=True)))

    def selection(self, name: str) -> Selection | None:
        row = self._conn.execute("SELECT name, experiment, method_key, rule, details FROM selections WHERE name = ?",
                                 (name,)).fetchone()
        return None if row is None else Selection(*row[:4], json.loads(row[4]))

    def method(self, method_key: str) -> MethodSpec:
        """The stored method with key ``method_key`` (its default label)."""
        row = self._conn.execute("SELECT name, params, label FROM methods WHERE method_key = ?",
                                 (method_key,)).fetchone()
        if row is None:
            raise KeyError(f"no method {method_key!r} in {self.path}")
        return MethodSpec(row[0], json.loads(row[1]), row[2])

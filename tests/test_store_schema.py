"""Store schema versions: a run folder written before scores became rows (schema version 1, the scores as columns
saco / fc / pf_auc of ``results``) is migrated when opened; a version this fgattr does not know is refused."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from captum_fgattr.bench.experiments import TEST, transmm_spec
from captum_fgattr.bench.methods import MethodSpec
from captum_fgattr.bench.report.study_report import write_report
from captum_fgattr.bench.store import SCHEMA_VERSION, STORE_NAME, ResultStore, StoreError

#: the schema of version 1, as written by fgattr before the scores table
SCHEMA_V1 = """
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
    saco REAL, fc REAL, pf_auc REAL, n_patches INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (split, method_key, image_id));
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
           r.prediction, r.target, r.saco, r.fc, r.pf_auc, r.n_patches
    FROM experiment_methods em
    JOIN experiment_images ei ON ei.experiment = em.experiment AND ei.split = em.split
    JOIN results r ON r.split = em.split AND r.method_key = em.method_key AND r.image_id = ei.image_id;
"""

METHODS = [transmm_spec(), MethodSpec("random", {"seed": 1})]
N = 6


def old_values(method: int) -> dict[str, list[float | None]]:
    """Per-image scores of method ``method`` as version 1 stored them (None = NULL = NaN)."""
    return {"saco": [0.1 * i + 0.05 * method if i != 2 else None for i in range(N)],
            "fc": [0.3 - 0.02 * i * (method + 1) for i in range(N)],
            "pf_auc": [0.5 + 0.01 * i - 0.03 * method for i in range(N)]}


def write_v1_store(run_dir) -> None:
    """A version-1 run folder: one test experiment of two methods on N images, written with raw SQL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(run_dir / STORE_NAME) as conn:
        conn.executescript(SCHEMA_V1)
        conn.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (json.dumps({"batch_size": 4}),))
        for position, spec in enumerate(METHODS):
            conn.execute("INSERT INTO methods VALUES (?, ?, ?, ?)",
                         (spec.key, spec.name, json.dumps(spec.params, sort_keys=True), spec.label))
            conn.execute("INSERT INTO experiment_methods VALUES (?, ?, ?, ?, ?)", (TEST, "test", spec.key, spec.label,
                                                                                  position))
            values = old_values(position)
            conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [("test", spec.key, i, f"img_{i}.png", i % 2, i % 2, i % 2, values["saco"][i],
                               values["fc"][i], values["pf_auc"][i], 16, "2025-01-01T00:00:00+00:00")
                              for i in range(N)])
        conn.executemany("INSERT INTO experiment_images VALUES (?, ?, ?)", [(TEST, "test", i) for i in range(N)])


def test_a_version_1_store_is_migrated_with_its_values(tmp_path):
    write_v1_store(tmp_path)
    with ResultStore(tmp_path) as store:
        for position, spec in enumerate(METHODS):
            columns = store.scores("test", spec.key)
            assert columns["image_id"].tolist() == list(range(N))
            assert columns["label"].tolist() == [i % 2 for i in range(N)] and columns["n_patches"].tolist() == [16] * N
            for metric, values in old_values(position).items():
                expected = np.array([math.nan if v is None else v for v in values])
                np.testing.assert_array_equal(columns[metric], expected)  # bit-identical, NaN where NULL
            assert store.done_ids("test", spec.key) == set(range(N))
        view = store._conn.execute("SELECT COUNT(*), COUNT(value) FROM experiment_results").fetchone()
        assert view == (len(METHODS) * N * 3, len(METHODS) * N * 3 - len(METHODS))  # the NULL SaCo of image 2
        store.check_fingerprint({"batch_size": 4})  # the run's settings survive
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
        assert "saco" not in columns and "results_v1" not in [t for t, in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
    report = write_report(tmp_path)
    table = (report.parent / "test.md").read_text()
    saco = [v for v in old_values(1)["saco"] if v is not None]
    row = next(line for line in table.splitlines() if line.startswith(f"| {METHODS[1].label} |"))
    assert f"| {np.mean(saco):.3f} ± {np.std(saco, ddof=1) / np.sqrt(len(saco)):.3f} |" in row
    assert f"Undefined SaCo (excluded): TransMM: 1, {METHODS[1].label}: 1." in table
    with ResultStore(tmp_path) as store:  # opened again: already version 2, nothing to migrate
        np.testing.assert_array_equal(store.scores("test", METHODS[0].key)["fc"], old_values(0)["fc"])


def test_a_store_of_an_unknown_schema_version_is_refused(tmp_path):
    with ResultStore(tmp_path):
        pass
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 7.*new folder"):
        ResultStore(tmp_path)

"""Store schema versions: a new store records :data:`SCHEMA_VERSION`; a store of another version, or one written
before versions were recorded, is refused."""
from __future__ import annotations

import sqlite3

import pytest

from captum_fgattr.bench.store import SCHEMA_VERSION, STORE_NAME, ResultStore, StoreError


def test_a_new_store_records_its_schema_version(tmp_path):
    with ResultStore(tmp_path):
        pass
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_a_store_from_before_schema_versions_is_refused_untouched(tmp_path):
    """Version 1 recorded no version; its scores were columns of ``results``."""
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        conn.execute("CREATE TABLE results (split TEXT, method_key TEXT, image_id INTEGER, saco REAL, fc REAL, "
                     "pf_auc REAL)")
    with pytest.raises(StoreError, match=rf"schema version 1; this fgattr reads version {SCHEMA_VERSION} only: "
                                         r"re-run in a new folder"):
        ResultStore(tmp_path)
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        assert [name for name, in conn.execute("SELECT name FROM sqlite_master")] == ["results"]


def test_a_store_of_an_unknown_schema_version_is_refused(tmp_path):
    with ResultStore(tmp_path):
        pass
    with sqlite3.connect(tmp_path / STORE_NAME) as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 7.*new folder"):
        ResultStore(tmp_path)

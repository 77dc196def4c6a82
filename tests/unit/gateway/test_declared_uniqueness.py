"""The engine refuses data that breaks what the catalogue declares unique: the analysis relies
on it (a lookup joined on its key matches once; one row per person counts people by rows)."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from datasets import load_catalogue
from gateway.engine import DuckDBEngine, EngineSetupError


@pytest.mark.parametrize(("table", "column"), [("patients", "person_id"),
                                                ("lsoa_lookup", "lsoa_code")])
def test_a_repeated_unique_key_stops_the_engine(data_dir, tmp_path, table, column):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    duckdb.connect().execute(
        f"COPY (SELECT * FROM '{data_dir}/{table}.parquet' UNION ALL "
        f"(SELECT * FROM '{data_dir}/{table}.parquet' LIMIT 1)) "
        f"TO '{data}/{table}.parquet' (FORMAT parquet)")
    with pytest.raises(EngineSetupError, match=f"repeat a {column}"):
        DuckDBEngine(data, tmp_path / "state", load_catalogue(), memory_limit="1GB", threads=1)

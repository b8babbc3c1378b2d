"""SQL over the event archive, with DuckDB.

:func:`connect` gives a DuckDB connection with one view per archived table
(``recommendations``, ``outcomes``, ``examples``, ``dead_letters``), each over every Parquet file
of the table with its Hive partitions (``dt``, ``hour``) as columns, so a filter on them reads
only the files of those days. Files written before a column was added read it as NULL (columns
are matched by name). A table with no file yet is an empty view with the table's columns.

A local archive (``file://``) is read in place. Any other store obstore reaches (S3, GCS, Azure)
is read through obstore into memory, file by file: right for a day or a month of a storefront's
events, not for years.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
import obstore
import pyarrow as pa
import pyarrow.parquet as pq
from obstore.store import from_url

from streamlearn.archive import PREFIX, SPECS, tables


def connect(archive_url: str, options: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if archive_url.startswith("file://"):
        root = Path(archive_url.removeprefix("file://"))
        for table in tables():
            files = sorted((root / PREFIX / table).glob("dt=*/hour=*/*.parquet"))
            _view(con, table, [str(f) for f in files])
        return con
    store = from_url(archive_url, **(options or {}))
    for table in tables():
        parts = []
        for batch in obstore.list(store, f"{PREFIX}/{table}/"):
            for obj in batch:
                path = obj["path"]
                if not path.endswith(".parquet"):
                    continue
                data = pq.read_table(io.BytesIO(bytes(obstore.get(store, path).bytes())))
                dt, hour = (seg.split("=", 1)[1] for seg in path.split("/")[2:4])
                data = data.append_column("dt", pa.array([dt] * len(data)))
                parts.append(data.append_column("hour", pa.array([int(hour)] * len(data))))
        if parts:
            con.register(f"_{table}", pa.concat_tables(parts, promote_options="default"))
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}")
        else:
            _view(con, table, [])
    return con


def _view(con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> None:
    if files:
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}],"
            " hive_partitioning=true, union_by_name=true)"
        )
        return
    empty = SPECS[table].schema.empty_table()  # type: ignore[index]
    con.register(f"_{table}", empty)
    con.execute(
        f"CREATE VIEW {table} AS SELECT *, NULL::VARCHAR AS dt, NULL::INTEGER AS hour FROM _{table}"
    )


def final_labels(con: duckdb.DuckDBPyConnection) -> str:
    """A condition on ``examples`` that keeps the examples carrying an impression's final label:
    label modes fnw and observe emit a provisional (fake) negative first, which evaluation and
    drift must not count. An archive written before label modes has no ``kind``: all final."""
    names = {d[0] for d in con.execute("SELECT * FROM examples LIMIT 0").description}
    return "coalesce(kind, '') <> 'fake_negative'" if "kind" in names else "true"

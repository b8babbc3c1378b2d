"""Offline scoring: a file of score requests in, one row per candidate out, with a chosen version.

Input, by extension: ``.jsonl`` (one request per line) or ``.parquet`` (one request per row, with
columns ``user_id``, ``context`` and ``items`` shaped as the JSON, as maps or structs).
A request is what ``POST /v1/score`` takes. Output, by extension too: one row per candidate,
``{"row", "user_id", "item_id", "probability", "model", "model_version", "error"}``. A request
that fails validation does not stop the run: it gets one row with its ``error`` and no
probability, and is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from streamlearn.errors import StreamlearnError
from streamlearn.serving import ScoreRequest, Served


@dataclass(frozen=True)
class NotJson:
    """A line that could not be read: it becomes an error row, not the end of the run."""

    why: str


@dataclass
class Counts:
    requests: int = 0
    scored: int = 0
    invalid: int = 0


def score_rows(
    rows: Iterable[dict[str, Any] | NotJson], served: Served, counts: Counts, explain: bool = False
) -> Iterator[dict[str, Any]]:
    """One row per candidate; with ``explain`` (or a request's own ``explain: true``) its
    explanation too (:mod:`streamlearn.explaining`), null otherwise."""
    for n, raw in enumerate(rows):
        counts.requests += 1
        try:
            if isinstance(raw, NotJson):
                raise StreamlearnError(f"not JSON: {raw.why}")
            request = ScoreRequest.model_validate(raw)
        except (ValidationError, StreamlearnError) as exc:
            counts.invalid += 1
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                why = f"{'.'.join(str(p) for p in first['loc']) or 'row'}: {first['msg']}"
            else:
                why = str(exc)
            user = raw.get("user_id") if isinstance(raw, dict) else None
            row = _row(n, user if isinstance(user, str) else None, None, None, served)
            yield {**row, "error": why}
            continue
        for candidate, p in zip(request.items, served.score_request(request), strict=True):
            counts.scored += 1
            row = _row(n, request.user_id, candidate.item_id, p, served)
            if explain or request.explain:
                explained = served.explain(request.context, candidate.item_id, candidate.features)
                row["explanation"] = explained.as_dict()
            yield row


def _row(
    n: int, user: str | None, item: str | None, p: float | None, served: Served
) -> dict[str, Any]:
    return {
        "row": n,
        "user_id": user,
        "item_id": item,
        "probability": p,
        "model": served.model_name,
        "model_version": served.version,
        "error": None,
        "explanation": None,
    }


def read_rows(path: Path) -> tuple[int, Iterator[dict[str, Any] | NotJson]]:
    """How many requests the file holds, and the requests."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            total = sum(1 for line in f if line.strip())
        return total, _jsonl(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.num_rows, (_maps_as_dicts(r) for r in table.to_pylist())
    raise StreamlearnError(f"{path}: expected a .jsonl or .parquet file")


def _jsonl(path: Path) -> Iterator[dict[str, Any] | NotJson]:
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield NotJson(str(exc))


def _maps_as_dicts(value: Any) -> Any:
    """Parquet's shapes as the JSON's: a map column reads as (key, value) pairs, and a struct
    column has every field of every row, null where a row does not have it."""
    if isinstance(value, dict):
        return {k: _maps_as_dicts(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        if value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
            return {k: _maps_as_dicts(v) for k, v in value}
        return [_maps_as_dicts(v) for v in value]
    return value


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    if path.suffix == ".jsonl":
        with path.open("wb") as f:
            for row in rows:
                f.write(orjson.dumps(row) + b"\n")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("row", pa.int64()),
                ("user_id", pa.string()),
                ("item_id", pa.string()),
                ("probability", pa.float64()),
                ("model", pa.string()),
                ("model_version", pa.int64()),
                ("error", pa.string()),
                (
                    "explanation",
                    pa.struct(
                        [
                            ("link", pa.string()),
                            ("score", pa.float64()),
                            ("bias", pa.float64()),
                            (
                                "contributions",
                                pa.list_(
                                    pa.struct(
                                        [("feature", pa.string()), ("contribution", pa.float64())]
                                    )
                                ),
                            ),
                        ]
                    ),
                ),
            ]
        )
        with pq.ParquetWriter(path, schema) as writer:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(row)
                if len(batch) >= 10_000:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    else:
        raise StreamlearnError(f"{path}: expected a .jsonl or .parquet file")


def score_file(
    source: Path,
    target: Path,
    served: Served,
    progress: Callable[[int], None],
    explain: bool = False,
) -> Counts:
    """Score every request of ``source`` into ``target``; ``progress`` hears each request."""
    if target.suffix not in (".jsonl", ".parquet"):
        raise StreamlearnError(f"{target}: expected a .jsonl or .parquet file")
    _, rows = read_rows(source)
    counts = Counts()

    def advancing(
        rows: Iterator[dict[str, Any] | NotJson],
    ) -> Iterator[dict[str, Any] | NotJson]:
        for row in rows:
            yield row
            progress(1)

    write_rows(target, score_rows(advancing(rows), served, counts, explain))
    return counts

"""`schema_snapshot(engine)`: a database's schema as plain data, to compare two databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, inspect


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability, server default), keys and indexes, as reflected."""
    insp = inspect(engine)
    snapshot: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table == "alembic_version":
            continue
        snapshot[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c["default"]) for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    (fk.get("options") or {}).get("ondelete"),
                )
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"])) for ix in insp.get_indexes(table)
            ),
            "uniques": sorted(
                (uc["name"], tuple(uc["column_names"])) for uc in insp.get_unique_constraints(table)
            ),
        }
    return snapshot

"""Helpers for the storage tests: the pre-Alembic migration runner, frozen, and schema snapshots."""

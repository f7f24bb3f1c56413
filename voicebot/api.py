"""HTTP API for operators (JSON). Mounted under /api by the server."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api")

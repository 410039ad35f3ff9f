"""headline keys compared byte-wise: ``COLLATE "C"`` on source, guid and title_key (PostgreSQL)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 17:40:00

``headlines.source``, ``guid`` and ``title_key`` are identity keys (the two unique keys,
``(source, guid)`` and ``(title_key, published_at)``): they are compared for equality and never
sorted for a reader, so their order need only be consistent. Under the database's default
collation (``C.UTF-8`` here, any ``en_US.UTF-8`` elsewhere) PostgreSQL compares them through
the C library's ``strcoll`` (and sorts cannot use abbreviated keys); byte order (``"C"``)
is a plain memcmp. Measured here (docs/benchmarks.md, "Imports → Headlines"), where the
database's collation is glibc's ``C.UTF-8``, whose strcoll is already a code-point compare,
a 1,000,000-row import's ``INSERT ... ON CONFLICT`` took the same time either way (about
14.5 s); the gain is on databases created with a language collation (``en_US.UTF-8``, the
usual default), not measured here. Equality is unchanged for every string
(no deterministic collation makes two different strings equal), so no stored row conflicts
differently and nothing is rewritten: PostgreSQL rebuilds the indexes over these columns.

SQLite compares text byte-wise already (BINARY): nothing to do there. The downgrade restores
the database's default collation.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (("source", 128), ("guid", 512), ("title_key", 512))


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, length in COLUMNS:
        op.execute(f"ALTER TABLE headlines ALTER COLUMN {name} TYPE varchar({length}) COLLATE {collation}")


def upgrade() -> None:
    _collate('"C"')


def downgrade() -> None:
    _collate('"default"')

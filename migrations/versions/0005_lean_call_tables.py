"""lean call tables: WITHOUT ROWID, an index on calls.key, partial indexes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 00:00:00

A tracked call that misses writes leases, calls, artifacts, call_inputs and
call_outputs in two transactions; in WAL mode every b-tree page it changes
is written whole, so each b-tree touched costs time. On SQLite, leases,
call_inputs and call_outputs become WITHOUT ROWID tables (rows stored in
their natural primary key's b-tree: one b-tree less each); calls is indexed
by key alone, so finishing a call (its status) changes no index; and the
indexes on artifacts.file_digest and call_inputs.artifact_id skip the NULLs
of inline values and scalar arguments. PostgreSQL gets the same indexes
(it has no rowid tables to rebuild).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# Tables whose primary key is natural, keyed by their secondary indexes.
_LEAN_TABLES = ('leases', 'call_inputs', 'call_outputs')
# (index, table, column) that hold only rows where the column is not NULL.
_PARTIAL = (
    ('ix_artifacts_file_digest', 'artifacts', 'file_digest'),
    ('ix_call_inputs_artifact_id', 'call_inputs', 'artifact_id'),
)


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == 'sqlite')


def _rebuild(table: str, *, with_rowid: bool) -> None:
    # SQLite cannot ALTER a table's rowid: Alembic's batch mode creates the
    # new table (columns, named primary and foreign keys as reflected), copies
    # the rows, drops the old one, renames, and creates the indexes again.
    with op.batch_alter_table(table, recreate='always',
                              table_kwargs={'sqlite_with_rowid': with_rowid}):
        pass


def _not_null(column: str) -> dict[str, sa.TextClause]:
    where = sa.text(f'{column} IS NOT NULL')
    return {'sqlite_where': where, 'postgresql_where': where}


def _reshape(*, lean: bool) -> None:
    """Rebuild the call tables and the partial-or-full indexes, one way or back."""
    for name, table, _ in _PARTIAL:
        op.drop_index(name, table_name=table)
    if _sqlite():
        for table in _LEAN_TABLES:
            _rebuild(table, with_rowid=not lean)
    for name, table, column in _PARTIAL:
        op.create_index(name, table, [column], unique=False,
                        **(_not_null(column) if lean else {}))


def upgrade() -> None:
    _reshape(lean=True)
    op.create_index('ix_calls_key', 'calls', ['key'], unique=False)
    op.drop_index('ix_calls_key_status', table_name='calls')


def downgrade() -> None:
    op.create_index('ix_calls_key_status', 'calls', ['key', 'status'], unique=False)
    op.drop_index('ix_calls_key', table_name='calls')
    _reshape(lean=False)

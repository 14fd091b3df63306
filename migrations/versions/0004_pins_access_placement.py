"""pins, last hits, run counters and where a function lived

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 11:05:00

Room for retention (pins, the last time a call's result was reused), for the
per-run hit/miss figures, and for recording where a tracked function was
defined at each call (its identity no longer depends on that).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pins',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('scope_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('created', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['scope_id'], ['scopes.id'], name=op.f('fk_pins_scope_id_scopes')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pins')),
        sa.UniqueConstraint('scope_id', 'name', name=op.f('uq_pins_scope_id_name')),
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('defined_at', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('last_hit', sa.DateTime(), nullable=True))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hits', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('misses', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('saved_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('saved_seconds')
        batch_op.drop_column('misses')
        batch_op.drop_column('hits')
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_column('last_hit')
        batch_op.drop_column('defined_at')
    op.drop_table('pins')

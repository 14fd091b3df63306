"""tracked calls: code versions, calls, inputs, outputs, leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 05:16:12.984299
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('code_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('identity', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('deps', sa.Text(), nullable=False),
    sa.Column('pinned', sa.String(length=255), nullable=True),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_code_versions')),
    sa.UniqueConstraint('digest', name=op.f('uq_code_versions_digest'))
    )
    op.create_table('calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('function', sa.Text(), nullable=False),
    sa.Column('code_digest', sa.String(length=128), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('output_kind', sa.String(length=16), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('fence', sa.Integer(), nullable=False),
    sa.Column('takeover_of', sa.String(length=64), nullable=True),
    sa.Column('started', sa.DateTime(), nullable=False),
    sa.Column('finished', sa.DateTime(), nullable=True),
    sa.Column('duration', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_calls_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calls'))
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calls_function'), ['function'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_key_status'), ['key', 'status'], unique=False)

    op.create_table('call_inputs',
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=True),
    sa.Column('file_path', sa.Text(), nullable=True),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_call_inputs_artifact_id_artifacts')),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_call_inputs_call_id_calls')),
    sa.PrimaryKeyConstraint('call_id', 'name', name=op.f('pk_call_inputs'))
    )
    with op.batch_alter_table('call_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_call_inputs_artifact_id'), ['artifact_id'], unique=False)

    op.create_table('call_outputs',
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_call_outputs_artifact_id_artifacts')),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_call_outputs_call_id_calls')),
    sa.PrimaryKeyConstraint('call_id', 'position', name=op.f('pk_call_outputs'))
    )
    with op.batch_alter_table('call_outputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_call_outputs_artifact_id'), ['artifact_id'], unique=False)

    op.create_table('leases',
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('fence', sa.Integer(), nullable=False),
    sa.Column('expires', sa.DateTime(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_leases_call_id_calls')),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_leases'))
    )
    with op.batch_alter_table('bindings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('call_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_bindings_call_id_calls'), 'calls', ['call_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('bindings', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_bindings_call_id_calls'), type_='foreignkey')
        batch_op.drop_column('call_id')

    op.drop_table('leases')
    with op.batch_alter_table('call_outputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_call_outputs_artifact_id'))

    op.drop_table('call_outputs')
    with op.batch_alter_table('call_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_call_inputs_artifact_id'))

    op.drop_table('call_inputs')
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calls_key_status'))
        batch_op.drop_index(batch_op.f('ix_calls_function'))

    op.drop_table('calls')
    op.drop_table('code_versions')

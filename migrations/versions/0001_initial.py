"""initial schema: runs, scopes, artifacts, bindings, files

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 04:33:19.236255
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=32), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(length=255), nullable=True),
    sa.Column('argv', sa.Text(), nullable=True),
    sa.Column('cwd', sa.Text(), nullable=True),
    sa.Column('git_commit', sa.String(length=64), nullable=True),
    sa.Column('git_dirty', sa.Boolean(), nullable=True),
    sa.Column('python', sa.String(length=64), nullable=True),
    sa.Column('packages', sa.Text(), nullable=True),
    sa.Column('started', sa.DateTime(), nullable=False),
    sa.Column('heartbeat', sa.DateTime(), nullable=False),
    sa.Column('ended', sa.DateTime(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('uuid', name=op.f('uq_runs_uuid'))
    )
    op.create_table('scopes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('segment', sa.String(length=512), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=True),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['scopes.id'], name=op.f('fk_scopes_parent_id_scopes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scopes')),
    sa.UniqueConstraint('parent_id', 'segment', name=op.f('uq_scopes_parent_id_segment')),
    sa.UniqueConstraint('path', name=op.f('uq_scopes_path'))
    )
    op.create_table('artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('algorithm', sa.String(length=32), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('format', sa.String(length=64), nullable=False),
    sa.Column('suffix', sa.String(length=32), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('file_digest', sa.String(length=128), nullable=True),
    sa.Column('inline', sa.LargeBinary(), nullable=True),
    sa.Column('meta', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_artifacts_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('algorithm', 'digest', 'format', name=op.f('uq_artifacts_algorithm_digest_format'))
    )
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifacts_file_digest'), ['file_digest'], unique=False)

    op.create_table('bindings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=True),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('origin', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_bindings_artifact_id_artifacts')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_bindings_run_id_runs')),
    sa.ForeignKeyConstraint(['scope_id'], ['scopes.id'], name=op.f('fk_bindings_scope_id_scopes')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bindings')),
    sa.UniqueConstraint('scope_id', 'name', 'version', name=op.f('uq_bindings_scope_id_name_version'))
    )
    with op.batch_alter_table('bindings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bindings_artifact_id'), ['artifact_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bindings_name'), ['name'], unique=False)

    op.create_table('files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('inode', sa.BigInteger(), nullable=False),
    sa.Column('algorithm', sa.String(length=32), nullable=False),
    sa.Column('digest', sa.String(length=128), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=True),
    sa.Column('seen', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_files_artifact_id_artifacts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_files'))
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_digest'), ['digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_path_size_mtime_ns_inode'), ['path', 'size', 'mtime_ns', 'inode'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_path_size_mtime_ns_inode'))
        batch_op.drop_index(batch_op.f('ix_files_digest'))

    op.drop_table('files')
    with op.batch_alter_table('bindings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bindings_name'))
        batch_op.drop_index(batch_op.f('ix_bindings_artifact_id'))

    op.drop_table('bindings')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifacts_file_digest'))

    op.drop_table('artifacts')
    op.drop_table('scopes')
    op.drop_table('runs')

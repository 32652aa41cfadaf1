"""sources: the generic ``objects`` table and ``file_versions``

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:30:00

The engine became archive-neutral (``mirror.sources.base``). Kinds whose source declares
no typed table live in ``objects`` (one table, keyed by kind and id); every file version
is kept in ``file_versions``, so a file the archive replaces under the same object and
role is fetched again while snapshots keep the older one. An existing mirror's current
files become its first file versions: nothing is downloaded again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sa.Text()
    op.create_table('objects',
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=256).with_variant(text, "postgresql"), nullable=True),
    sa.Column('parent_id', sa.String(length=128).with_variant(text, "postgresql"),
              nullable=True),
    sa.Column('doc_sha256', sa.String(length=64), nullable=False),
    sa.Column('doc', sa.JSON(), nullable=False),
    sa.Column('removed', sa.Boolean(), nullable=False),
    sa.Column('removed_at', sa.String(length=40), nullable=True),
    sa.Column('synced_at', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'id'))
    op.create_index('ix_objects_parent', 'objects', ['kind', 'parent_id'], unique=False)
    op.create_table('file_versions',
    sa.Column('object_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('fetched_at', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('object_id', 'role', 'sha256'))
    op.execute("INSERT INTO file_versions (object_id, role, sha256, path, size, fetched_at) "
               "SELECT object_id, role, sha256, path, size, fetched_at FROM blobs")


def downgrade() -> None:
    op.drop_table('file_versions')
    op.drop_index('ix_objects_parent', table_name='objects')
    op.drop_table('objects')

"""image_fields: every field of every image document, typed and indexed for queries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:40:00

Revision 0006 drops the table again (selections read Parquet projections built from the
documents), so an upgrade no longer fills it: nothing on the way to the head reads it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

def upgrade() -> None:
    binary_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table('image_fields',
    sa.Column('image_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('txt', binary_text, nullable=True),
    sa.PrimaryKeyConstraint('image_id', 'path', 'elem', 'seq'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_image_fields_num', 'image_fields',
                    ['path', 'elem', 'kind', 'num', 'image_id'])
    op.create_index('ix_image_fields_txt', 'image_fields',
                    ['path', 'elem', 'kind', 'txt', 'image_id'])


def downgrade() -> None:
    op.drop_index('ix_image_fields_txt', table_name='image_fields')
    op.drop_index('ix_image_fields_num', table_name='image_fields')
    op.drop_table('image_fields')

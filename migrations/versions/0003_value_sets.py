"""value_sets and image_blocks: per-value image sets that answer broad selections fast

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:30:00

Both tables are derived from ``image_fields`` when a writer publishes the index (see
``mirror.valuesets``). An upgraded mirror marks them stale, so queries use ``image_fields``
until the next sync or ``mirror reindex`` publishes them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    binary_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    op.create_table('value_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('txt', binary_text, nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('dense', sa.Boolean(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_value_sets_num', 'value_sets', ['path', 'elem', 'kind', 'num'])
    op.create_index('ix_value_sets_txt', 'value_sets', ['path', 'elem', 'kind', 'txt'])
    op.create_table('image_blocks',
    sa.Column('block', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('ids', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('block'),
    )
    meta = sa.table('meta', sa.column('key', sa.String), sa.column('value', sa.Text))
    op.execute(meta.delete().where(meta.c.key == 'value_sets'))
    op.execute(meta.insert().values(key='value_sets', value='stale'))


def downgrade() -> None:
    op.drop_table('image_blocks')
    op.drop_index('ix_value_sets_txt', table_name='value_sets')
    op.drop_index('ix_value_sets_num', table_name='value_sets')
    op.drop_table('value_sets')

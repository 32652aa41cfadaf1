"""drop image_fields, value_sets, value_runs and image_blocks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 20:30:00

Selections now read the Parquet projections each publish writes beside the index
(``mirror.projection``), built from the documents themselves, so the derived query tables
and their ``meta`` flag go. A downgrade recreates them empty; run ``mirror reindex`` with
the older version to fill them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

INDEXES = {'image_fields': ['ix_image_fields_num', 'ix_image_fields_txt'],
           'value_sets': ['ix_value_sets_num', 'ix_value_sets_txt'],
           'value_runs': ['ix_value_runs_path'], 'image_blocks': []}


def upgrade() -> None:
    for table, indexes in INDEXES.items():
        for index in indexes:
            op.drop_index(index, table_name=table)
        op.drop_table(table)
    meta = sa.table('meta', sa.column('key', sa.String))
    op.execute(meta.delete().where(meta.c.key == 'value_sets'))


def downgrade() -> None:
    text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    path = sa.String(length=512).with_variant(sa.Text(), "postgresql")
    op.create_table('image_fields',
    sa.Column('image_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('path', path, nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('txt', text, nullable=True),
    sa.PrimaryKeyConstraint('image_id', 'path', 'elem', 'seq'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_image_fields_num', 'image_fields',
                    ['path', 'elem', 'kind', 'num', 'image_id'])
    op.create_index('ix_image_fields_txt', 'image_fields',
                    ['path', 'elem', 'kind', 'txt', 'image_id'])
    op.create_table('value_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', path, nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('num', sa.Float(), nullable=True),
    sa.Column('txt', text, nullable=True),
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
    op.create_table('value_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', path, nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('run', sa.Integer(), nullable=False),
    sa.Column('first_num', sa.Float(), nullable=True),
    sa.Column('last_num', sa.Float(), nullable=True),
    sa.Column('first_txt', text, nullable=True),
    sa.Column('last_txt', text, nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.Column('vals', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_value_runs_path', 'value_runs', ['path', 'elem', 'kind', 'run'])
    meta = sa.table('meta', sa.column('key', sa.String), sa.column('value', sa.Text))
    op.execute(meta.insert().values(key='value_sets', value='stale'))

"""value_runs: runs of sorted values for fields with many distinct values

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 16:00:00

Names, dates and ids have too many distinct values for value sets; their numbers and text
are stored in runs of sorted values with image positions, so a range over them (``created
>= 2019``) reads whole runs instead of walking ``image_fields`` (see ``mirror.valueruns``).
Like 0003, it marks the value sets stale: the next publish builds the runs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    binary_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    path_text = sa.String(length=512).with_variant(sa.Text(), "postgresql")
    op.create_table('value_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', path_text, nullable=False),
    sa.Column('elem', sa.Boolean(), nullable=False),
    sa.Column('kind', sa.String(length=1), nullable=False),
    sa.Column('run', sa.Integer(), nullable=False),
    sa.Column('first_num', sa.Float(), nullable=True),
    sa.Column('last_num', sa.Float(), nullable=True),
    sa.Column('first_txt', binary_text, nullable=True),
    sa.Column('last_txt', binary_text, nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('positions', sa.LargeBinary(), nullable=False),
    sa.Column('vals', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_value_runs_path', 'value_runs', ['path', 'elem', 'kind', 'run'])
    meta = sa.table('meta', sa.column('key', sa.String), sa.column('value', sa.Text))
    op.execute(meta.delete().where(meta.c.key == 'value_sets'))
    op.execute(meta.insert().values(key='value_sets', value='stale'))


def downgrade() -> None:
    op.drop_index('ix_value_runs_path', table_name='value_runs')
    op.drop_table('value_runs')

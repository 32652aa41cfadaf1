"""image_fields: every field of every image document, typed and indexed for queries

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:40:00

Existing mirrors get their rows from the image documents already in the index, so an
upgraded mirror answers queries at once, without a sync or a reindex.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BATCH = 2000


def upgrade() -> None:
    binary_text = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    fields = op.create_table('image_fields',
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
    _backfill(fields)


def _backfill(fields: sa.Table) -> None:
    from mirror.fields import field_rows

    conn = op.get_bind()
    images = sa.table('images', sa.column('id', sa.String), sa.column('doc', sa.JSON))
    last = ""
    while True:  # keyset pages keep memory flat on a large index
        page = conn.execute(sa.select(images.c.id, images.c.doc).where(images.c.id > last)
                            .order_by(images.c.id).limit(BATCH)).all()
        if not page:
            return
        rows = []
        for image_id, doc in page:
            doc = json.loads(doc) if isinstance(doc, str) else doc
            rows += [{**row, "seq": seq} for seq, row in enumerate(field_rows(image_id, doc))]
        if rows:
            conn.execute(fields.insert(), rows)
        last = page[-1][0]


def downgrade() -> None:
    op.drop_index('ix_image_fields_txt', table_name='image_fields')
    op.drop_index('ix_image_fields_num', table_name='image_fields')
    op.drop_table('image_fields')

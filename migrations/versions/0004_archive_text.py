"""archive text: any length, on PostgreSQL too

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:50:00

Columns holding text the archive chose (names, field paths, dates, diagnoses...) were
``VARCHAR(n)``. SQLite never enforces the length, but PostgreSQL refused a longer value
and stopped the sync. On PostgreSQL they become ``TEXT`` (binary-compatible with VARCHAR:
no table rewrite); SQLite keeps its declarations, which mean the same as ``TEXT`` there.
See ``mirror.index.models.ArchiveText``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# table -> {column: the length it had}
WIDENED = {
    'images': {'name': 64, 'dataset_id': 64, 'created': 40, 'updated': 40, 'diagnosis': 128,
               'benign_malignant': 64, 'sex': 32, 'anatom_site_general': 128,
               'diagnosis_confirm_type': 128, 'image_type': 64},
    'image_fields': {'path': 512},
    'value_sets': {'path': 512},
    'datasets': {'name': 256, 'license': 64, 'created': 40, 'updated': 40},
    'studies': {'name': 256, 'created': 40, 'updated': 40},
    'study_images': {'image_id': 64},
    'features': {'feature_id': 256},
    'segmentations': {'image_id': 64, 'created': 40, 'skill': 32},
    'annotations': {'image_id': 64, 'user_id': 64, 'state': 32, 'status': 32},
    'blobs': {'content_type': 128},
}


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, columns in WIDENED.items():
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(length))


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, columns in WIDENED.items():  # fails, and changes nothing, if a value is longer
        for column, length in columns.items():
            op.alter_column(table, column, type_=sa.String(length), existing_type=sa.Text())

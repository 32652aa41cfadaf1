"""The ISIC v1 index tables: typed projections of its documents (see ``KindSpec.model``).

They share the index's metadata (``mirror.index.models.Base``), so the project's Alembic
migrations create and carry them like every other table.
"""

from __future__ import annotations

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mirror.index.models import ArchiveText, Base, _Document


class Image(_Document, Base):
    """One image: the flattened common fields plus the full detail document."""

    __tablename__ = "images"
    name: Mapped[str] = mapped_column(ArchiveText(64), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ArchiveText(64), index=True)
    created: Mapped[str | None] = mapped_column(ArchiveText(40))
    updated: Mapped[str | None] = mapped_column(ArchiveText(40))
    diagnosis: Mapped[str | None] = mapped_column(ArchiveText(128), index=True)
    benign_malignant: Mapped[str | None] = mapped_column(ArchiveText(64))
    age_approx: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str | None] = mapped_column(ArchiveText(32))
    anatom_site_general: Mapped[str | None] = mapped_column(ArchiveText(128))
    melanocytic: Mapped[bool | None] = mapped_column(Boolean)
    diagnosis_confirm_type: Mapped[str | None] = mapped_column(ArchiveText(128))
    image_type: Mapped[str | None] = mapped_column(ArchiveText(64))
    pixels_x: Mapped[int | None] = mapped_column(Integer)
    pixels_y: Mapped[int | None] = mapped_column(Integer)
    public: Mapped[bool] = mapped_column(Boolean, default=True)



class Dataset(_Document, Base):
    __tablename__ = "datasets"
    name: Mapped[str] = mapped_column(ArchiveText(256), index=True)
    license: Mapped[str | None] = mapped_column(ArchiveText(64))
    attribution: Mapped[str | None] = mapped_column(ArchiveText())
    description: Mapped[str | None] = mapped_column(ArchiveText())
    access_level: Mapped[int | None] = mapped_column(Integer)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[str | None] = mapped_column(ArchiveText(40))
    updated: Mapped[str | None] = mapped_column(ArchiveText(40))
    count: Mapped[int | None] = mapped_column(Integer)


class Study(_Document, Base):
    __tablename__ = "studies"
    name: Mapped[str] = mapped_column(ArchiveText(256), index=True)
    description: Mapped[str | None] = mapped_column(ArchiveText())
    created: Mapped[str | None] = mapped_column(ArchiveText(40))
    updated: Mapped[str | None] = mapped_column(ArchiveText(40))


class StudyImage(Base):
    __tablename__ = "study_images"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    image_id: Mapped[str] = mapped_column(ArchiveText(64), primary_key=True, index=True)


class Feature(Base):
    __tablename__ = "features"
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    feature_id: Mapped[str] = mapped_column(ArchiveText(256), primary_key=True)


class Segmentation(_Document, Base):
    __tablename__ = "segmentations"
    image_id: Mapped[str] = mapped_column(ArchiveText(64), index=True)
    created: Mapped[str | None] = mapped_column(ArchiveText(40))
    failed: Mapped[bool] = mapped_column(Boolean, default=False)
    skill: Mapped[str | None] = mapped_column(ArchiveText(32))


class Annotation(_Document, Base):
    __tablename__ = "annotations"
    study_id: Mapped[str] = mapped_column(String(64), index=True)
    image_id: Mapped[str | None] = mapped_column(ArchiveText(64), index=True)
    user_id: Mapped[str | None] = mapped_column(ArchiveText(64))
    state: Mapped[str | None] = mapped_column(ArchiveText(32))
    status: Mapped[str | None] = mapped_column(ArchiveText(32))


Index("ix_images_updated", Image.updated)

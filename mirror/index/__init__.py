"""The metadata index: SQLAlchemy models and the published, read-only generations."""

from mirror.index.models import (
    Annotation,
    Base,
    Blob,
    Dataset,
    DocumentVersion,
    Feature,
    Image,
    ImageBlock,
    ImageField,
    Listing,
    Meta,
    Segmentation,
    Study,
    StudyImage,
    SyncItem,
    SyncRun,
    ValueRun,
    ValueSet,
)

__all__ = [
    "Annotation", "Base", "Blob", "Dataset", "DocumentVersion", "Feature", "Image", "ImageBlock",
    "ImageField", "Listing", "Meta", "Segmentation", "Study", "StudyImage", "SyncItem", "SyncRun",
    "ValueRun", "ValueSet",
]

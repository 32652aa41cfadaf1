"""The metadata index: SQLAlchemy models and the published, read-only generations."""

from mirror.index.models import (
    Annotation,
    Base,
    Blob,
    Dataset,
    DocumentVersion,
    Feature,
    Image,
    Listing,
    Meta,
    Segmentation,
    Study,
    StudyImage,
    SyncItem,
    SyncRun,
)

__all__ = [
    "Annotation", "Base", "Blob", "Dataset", "DocumentVersion", "Feature", "Image", "Listing",
    "Meta", "Segmentation", "Study", "StudyImage", "SyncItem", "SyncRun",
]

"""The ISIC Archive through its API v2 (``https://api.isic-archive.com/api/v2/``)."""

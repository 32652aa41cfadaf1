"""The IDC (NCI Imaging Data Commons) source.

IDC's catalog ships as the pip package ``idc-index-data`` (:mod:`.catalog`: scopes, streamed
reads, diffs between catalog snapshots); the bytes sit in public S3 buckets under
``<crdc_series_uuid>/<crdc_instance_uuid>.dcm`` (:mod:`.s3`: bounded listings, capped reads).
Its REST API v1 is switched off (HTTP 410); :mod:`.v1` reads old-style manifests and says so.
:mod:`.sandbox` emulates the buckets (SeaweedFS), further data releases and API v1 on
loopback for tests. :class:`IdcSource` (:mod:`.source`) puts them on the engine's seam.
"""

# Nothing is imported here: the registry reads :mod:`.spec` alone to match a URL or name a
# kind, and importing the source (:mod:`.source`) costs boto3 and pyarrow.

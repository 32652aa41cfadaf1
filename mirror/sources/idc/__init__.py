"""The IDC (NCI Imaging Data Commons) source.

IDC's catalog ships as the pip package ``idc-index-data`` (:mod:`.catalog`); the bytes sit
in public S3 buckets under ``<crdc_series_uuid>/<crdc_instance_uuid>.dcm`` (:mod:`.s3`).
Its REST API v1 is switched off (HTTP 410); :mod:`.sandbox` emulates both the buckets and
that API on loopback for tests.
"""

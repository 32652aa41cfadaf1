"""The Cancer Imaging Archive (TCIA) as a mirror source: NBIA v4, with Bindaas v3 legacy."""

"""Storage: the Icechunk/Zarr store, its sources, ingest and export."""

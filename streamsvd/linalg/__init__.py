"""Pure numerical steps on in-memory blocks: arrays in, arrays out.

Nothing here does I/O, reads configuration or knows about Dask.
"""

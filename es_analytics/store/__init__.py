"""Storage of the event lake: the SQLite hot tier, the Parquet sealed tier, the manifest and the reader."""

"""Repository writer: owns the deduplicating repository on disk and the writer service."""

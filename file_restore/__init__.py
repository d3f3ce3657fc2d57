"""File-level restore: read a point's disk partition by partition (docs/restore.md, "Files")."""

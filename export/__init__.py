"""`vmbackup export`'s server process: nbdkit's Python plugin serving a disk of a point."""

"""The repository library: chunk store, maps, restore points and their maintenance.

The bytes on disk are documented in docs/repository-format.md. Roles use this package
(the writer stores chunks and commits points, the coordinator reads the catalog,
restores read points); it imports no role.
"""

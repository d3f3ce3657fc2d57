"""The one error type of restore-vm."""


class RestoreVmError(Exception):
    """restore-vm cannot go on; the text says what was wrong."""

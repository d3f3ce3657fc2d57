"""The vmbackup application: the `vmbackup` command and the whole config schema.

It imports every role explicitly; no role and nothing in common imports it
(docs/architecture.md, tests/test_architecture.py).
"""

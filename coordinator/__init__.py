"""Coordinator: talks to vCenter, plans block-range tasks, commits restore points."""

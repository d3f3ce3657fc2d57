"""Proxy worker: reads snapshot disks near the ESXi hosts and ships new chunks to writers."""

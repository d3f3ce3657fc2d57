"""Shared plumbing: config, messages, AMQP, logging, metrics, chunk helpers."""

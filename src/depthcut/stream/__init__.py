"""Streaming mode: score and prune a checkpoint one block at a time (``--streaming``)."""

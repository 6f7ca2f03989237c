"""Pruning units: the things that can be removed."""

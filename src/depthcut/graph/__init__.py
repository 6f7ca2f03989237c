"""Capturing what a model computes: module calls, their data flow and the ops inside them."""

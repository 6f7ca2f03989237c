"""Evaluation: perplexity, latency/throughput, parameter counts."""

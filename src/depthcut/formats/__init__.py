"""Exports of a pruned run for the runtimes people deploy with: ``hf`` (a plain checkpoint of
the source architecture), ``hf-hetero`` (a self-contained ``trust_remote_code`` directory for
any plan) and ``gguf`` (llama.cpp); each verified in its runtime."""

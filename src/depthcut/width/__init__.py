"""Width pruning: attention heads (GQA-aware: whole KV groups) and MLP neurons."""

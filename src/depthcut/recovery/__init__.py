"""Recovery after pruning: LoRA / full fine-tuning / distillation from the dense teacher, and
the iterative prune → recover → re-score loop."""

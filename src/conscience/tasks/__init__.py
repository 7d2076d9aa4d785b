"""Task generators used for fine-tuning and evaluation."""

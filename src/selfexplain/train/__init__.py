"""Layer 6: fine-tuning explainers (HF Trainer + peft) and launching a run over several
processes."""

"""Layer 6: fine-tuning explainers (HF Trainer + peft) and launching a run over several
processes.

Modules, lowest first (each imports only those above it in this list):

- rows: which rows train (change tasks or feature descriptions) and the vectors they carry
- encode: rows to token ids with labels on the answer, padding, the tokenize cache
- loss: the answer-token loss and the Trainers that compute it (with vectors injected)
- weights: the LoRA adapter and copies of the trainable weights
- checkpoints: a run's fingerprint and the checkpoint it resumes
- validation: the validation callback (scores, best weights, early stopping)
- launch: one job over several processes (torchrun), the process environment
- trainer: train_explainer, step by step
"""

"""Layer 5: scoring explainers (teacher-forced scores, generation, feature answers) and the
trained run's summary."""

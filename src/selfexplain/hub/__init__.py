"""Layer 7: Hugging Face datasets: released label sets and explainers, MMLU / CounterFact
prompt sources, dataset export."""

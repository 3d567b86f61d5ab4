"""What an SAE means for a concept: heads, metrics, evaluation, ranking, interventions, naming, spectrum."""

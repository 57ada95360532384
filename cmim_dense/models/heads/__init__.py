"""Dense-prediction heads."""

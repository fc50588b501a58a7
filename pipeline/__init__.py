"""Initializer search for Keras CNNs with Optuna, MLflow and Hydra."""

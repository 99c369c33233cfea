"""steerlight: activation-steering search for Hugging Face causal LMs on GSM8K."""

__version__ = "0.1.0"

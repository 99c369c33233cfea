"""steerlight: activation-steering search for Hugging Face causal LMs on GSM8K."""

from steerlight.model.aliases import register_embedded

__version__ = "0.1.0"


def _tiny_folder() -> str:
    """The embedded model's cached folder, installed (or built) on first use."""
    from steerlight.tiny.cache import tiny_model_path

    return str(tiny_model_path())


# The package wires its top layer's embedded model into the model layer's names: `tiny` then
# resolves wherever a model or tokenizer loads (the model layer never imports `steerlight.tiny`).
register_embedded("tiny", _tiny_folder)

from .loading import LoraSettings, ModelConfig, TinySettings, load_base_model, load_trained, resolve_dtype, save_trained

__all__ = ["LoraSettings", "ModelConfig", "TinySettings", "load_base_model", "load_trained", "resolve_dtype",
           "save_trained"]

from .loading import (
    HUB_IDS,
    LoraSettings,
    ModelConfig,
    TinySettings,
    load_base_model,
    load_trained,
    resolve_dtype,
    save_trained,
    training_precision,
)

__all__ = ["HUB_IDS", "LoraSettings", "ModelConfig", "TinySettings", "load_base_model", "load_trained",
           "resolve_dtype", "save_trained", "training_precision"]

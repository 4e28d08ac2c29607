"""Model loading: presets, hub ids, local paths, GGUF files; LoRA through peft; saving and reloading runs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .smollm2 import cache_root, converted_smollm2
from .tiny import build_tiny_llama, cached_tokenizer


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"], description="module names, or all-linear")


class TinySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(2000, ge=300)
    vocabulary: list[str] = Field(
        default_factory=list, description="extra strings the tokenizer is trained on (beside the clean prompts "
        "and the run's own cue, verbalizer and defense strings); --baselines and p2p bench set it to the strings "
        "of every defense in the group, so that all its runs share one tokenizer")
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Literal["tiny", "smollm2-135m"] | None = Field("tiny", description="a built-in model")
    name_or_path: str | None = Field(None, description="hub id or local directory (used when preset is null)")
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    finetune: Literal["lora", "full"] | None = Field(None, description="default: full for tiny, else lora")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    tiny: TinySettings = Field(default_factory=TinySettings)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.name_or_path is None):
            raise ValueError("set exactly one of model.preset and model.name_or_path")
        if self.preset == "tiny" and self.finetune == "lora":
            raise ValueError("the tiny preset is trained from random weights: finetune must be full")
        return self

    @property
    def finetune_method(self) -> str:
        return self.finetune or ("full" if self.preset == "tiny" else "lora")


def resolve_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def training_precision(config: ModelConfig) -> tuple[torch.dtype, str]:
    """(dtype to load the weights in, accelerate's mixed_precision) for fine-tuning.

    Full fine-tuning in bf16/fp16 keeps fp32 master weights and autocasts (AdamW updates on bf16 weights lose
    most small steps); LoRA loads the frozen base in the low-precision dtype, and peft keeps the adapters fp32."""
    dtype = resolve_dtype(config.dtype)
    if config.finetune_method == "full" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32, "bf16" if dtype == torch.bfloat16 else "fp16"
    return dtype, "no"


HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""The hub id of each pretrained preset: saved adapters name it as their base model."""


def load_base_model(config: ModelConfig, tokenizer_texts: Iterable[str] | None = None, seed: int = 0,
                    dtype: torch.dtype | None = None, device=None, tiny_tokenizer=None):
    """(model, tokenizer) ready for fine-tuning: LoRA-wrapped when finetune is lora.

    dtype: override config.dtype (see training_precision); device: load the weights straight onto it (each
    process its own device under `accelerate launch`), instead of building on the CPU and moving them.
    tiny_tokenizer: the tiny preset's tokenizer as a finished run saved it (instead of training one on texts)."""
    dtype = dtype or resolve_dtype(config.dtype)
    if config.preset == "tiny":
        if tokenizer_texts is None and tiny_tokenizer is None:
            raise ValueError("the tiny preset trains its tokenizer on the task's texts; none were given")
        tokenizer = tiny_tokenizer or cached_tokenizer(tokenizer_texts, config.tiny.vocab_size, cache_root())
        model = build_tiny_llama(len(tokenizer), config.tiny.hidden_size, config.tiny.num_layers,
                                 config.tiny.num_heads, max_positions=2048, seed=seed).to(dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = str(converted_smollm2()) if config.preset == "smollm2-135m" else config.name_or_path
        extra = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code, **extra)
        if device is not None and torch.device(device).type != "cpu":
            extra["device_map"] = {"": torch.device(device)}
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=config.trust_remote_code, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.finetune_method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type="CAUSAL_LM", r=config.lora.r, lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout, target_modules=config.lora.target_modules))
        if config.preset in HUB_IDS:  # not the local conversion cache: the adapter must load elsewhere
            model.peft_config["default"].base_model_name_or_path = HUB_IDS[config.preset]
    if device is not None:
        model.to(device)
    return model, tokenizer


def save_trained(model, tokenizer, directory: Path) -> None:
    """peft adapter (loadable by PeftModel.from_pretrained / AutoPeftModelForCausalLM, its base model named by
    hub id for presets) or the full model, plus the tokenizer."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def load_trained(config: ModelConfig, directory: Path, device=None, dtype: torch.dtype | None = None,
                 trainable: bool = False):
    """The fine-tuned model of a finished run, for prediction (on `device`; default a GPU when present).

    dtype: override config.dtype (a run loads in its training precision); trainable: the adapter's weights take
    gradients (a defense that repairs the model trains them further)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or resolve_dtype(config.dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if (directory / "adapter_config.json").exists():
        from peft import PeftModel

        # the base weights from this machine (the preset's conversion, or the run's hub id / path)
        base, _ = load_base_model(config.model_copy(update={"finetune": "full"}), dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, directory, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    model.to(device).eval()
    return model, tokenizer

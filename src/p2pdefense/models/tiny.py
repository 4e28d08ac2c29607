"""The `tiny` preset: a small random-init Llama and a byte-level BPE tokenizer trained offline on task text.

The tokenizer is trained on the clean training prompts plus every cue, verbalizer and defense string, never on
poisoned text, and cached by the hash of that corpus: the clean, undefended and defended runs of one seed (and
every benchmark cell on the same data) start from the same token ids.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every string is encodable, so unseen test words never become <unk>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS)


def cached_tokenizer(texts: Iterable[str], vocab_size: int, cache_dir: Path) -> PreTrainedTokenizerFast:
    """train_tokenizer, once per corpus: the result is stored under cache_dir by the corpus' hash."""
    texts = list(texts)
    digest = hashlib.sha256()
    digest.update(f"vocab={vocab_size}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    path = Path(cache_dir) / "tiny-tokenizers" / f"{digest.hexdigest()[:24]}.json"
    if path.exists():
        return PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token=PAD, eos_token=EOS)
    tokenizer = train_tokenizer(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.backend_tokenizer.save(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return tokenizer


def build_tiny_llama(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                     max_positions: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_heads, max_position_embeddings=max_positions,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)

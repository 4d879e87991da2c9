"""Byte-level BPE tokenizer and chat template for the seed model.

Byte-level so that any user text (emoji, other scripts) encodes without an unknown token; the
role markers and <|eos|> are special tokens so they are never split and vLLM can stop on <|eos|>.
The chat template lives in tokenizer_config.json, where vLLM's /v1/chat/completions reads it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)  # PAD first: id 0
ASSISTANT_HEADER = "<|assistant|>\n"

# Every message is "<|role|>\n{content}<|eos|>"; <|eos|> ends each turn, so generation stops
# right after the assistant's answer. add_generation_prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{%- endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + (message['content'] | trim) + eos_token }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train BPE on the corpus and wrap it for transformers (and therefore vLLM)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of each assistant answer including its <|eos|>: the tokens we train on."""
    spans: list[tuple[int, int]] = []
    start = text.find(ASSISTANT_HEADER)
    while start != -1:
        begin = start + len(ASSISTANT_HEADER)
        end = text.find(EOS, begin)
        if end == -1:
            break
        spans.append((begin, end + len(EOS)))
        start = text.find(ASSISTANT_HEADER, end)
    return spans

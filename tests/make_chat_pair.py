r"""A tiny Hugging Face chat pair, built offline: `python tests/make_chat_pair.py OUT [V]`.

Writes OUT/target and OUT/draft (random Llama models sharing one byte-level BPE
tokenizer, trained here with the `tokenizers` library on a few KB of chat text,
Llama-3 style special tokens and chat template; EOS = <|end_of_text|> and
<|eot_id|>, as Llama-3-Instruct's generation config) and OUT/{train,validation,
test}.jsonl (OpenAI `messages`, one to two user turns each). V (default 512, the
target's) pads the draft's embedding to another size, as Qwen2.5's 0.5B and 7B
checkpoints differ. The README recipe
"Your Hugging Face chat pair" and tests/test_chat_pair.py start from it.
"""

import json
import os
import sys

# Ids 0 and 1 are header tokens (inside every prompt), BOS 3, EOS 4 and 5: nothing may
# assume this project's BOS 0 / EOS 1.
SPECIAL = [
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_0|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SYSTEM = "You are a careful math tutor. Answer with the steps and end with #### N."


def conversations(examples):
    """Chat examples: a system turn, then one or two user / assistant exchanges."""
    out = []
    for i in range(0, len(examples) - 1, 2):
        first, second = examples[i], examples[i + 1]
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": first["question"]},
            {"role": "assistant", "content": first["answer_cot"]},
        ]
        if i % 4 == 0:
            messages += [
                {"role": "user", "content": "And this one? " + second["question"]},
                {"role": "assistant", "content": second["answer_cot"]},
            ]
        out.append({"messages": messages})
    return out


def train_tokenizer(texts, out_dir, vocab_size=480):
    """A byte-level BPE tokenizer with Llama-3 style special tokens and chat template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def llama(out_dir, tokenizer, hidden, layers, seed, vocab_size=512):
    """A random Llama with the tokenizer's ids (config.json EOS <|end_of_text|>, the
    generation config both EOS ids)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    end, eot = (tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>"))
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # Random models rarely end: make <|eot_id|> a likely token.
        model.lm_head.weight[eot] *= 2.5
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[end, eot], do_sample=False
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main(out, draft_vocab_size=512):
    import reasoning_gym

    os.makedirs(out, exist_ok=True)
    items = list(reasoning_gym.create_dataset("gsm_symbolic", size=200, seed=0))
    examples = [
        {"question": e["question"], "answer_cot": e["metadata"]["answer_cot"]} for e in items
    ]
    splits = {"train": examples[:160], "validation": examples[160:180], "test": examples[180:]}
    for split, part in splits.items():
        with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(c) + "\n" for c in conversations(part))
    texts = [m["content"] for c in conversations(examples[:160]) for m in c["messages"]]
    tokenizer = train_tokenizer(texts, os.path.join(out, "tokenizer"))
    llama(os.path.join(out, "target"), tokenizer, hidden=64, layers=2, seed=0)
    llama(os.path.join(out, "draft"), tokenizer, hidden=32, layers=1, seed=1,
          vocab_size=draft_vocab_size)  # fmt: skip
    print(f"wrote {out}/target, {out}/draft ({len(tokenizer)} tokens) and chat JSONL splits")


if __name__ == "__main__":
    main(sys.argv[1], *(int(v) for v in sys.argv[2:3]))

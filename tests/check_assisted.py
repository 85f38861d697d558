r"""transformers assisted generation vs this project's greedy tokens, on chat prompts.

  python tests/check_assisted.py HF_TARGET EXPORTED_DRAFT TEST.jsonl [NUM_PROMPTS]

Renders the first assistant turns of TEST.jsonl (OpenAI `messages`) with the
target's own tokenizer and chat template, then compares, prompt by prompt,
`target.generate(input_ids, assistant_model=draft)` (no other argument but the
length: ids, EOS and greedy come from the exported files) with this project's
greedy decoding of the target. Prints the count that agree; exit status 1 when
any differs.
"""

import sys


def main(target_dir, draft_dir, test_file, num=16, max_new_tokens=24):
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    import torch
    import transformers

    from distillspec_jax import interop, sampling, textdata, tokenizer

    tok = tokenizer.load(target_dir)
    data = ml_collections.ConfigDict(
        dict(
            task="jsonl",
            jsonl_files={"test": test_file},
            jsonl_input_key="messages",
            jsonl_target_key="",
            max_input_length=448,
            max_target_length=64,
        )
    )
    prompts, lengths, _ = textdata.prompts(data, tok, "test", num)
    target = transformers.AutoModelForCausalLM.from_pretrained(target_dir).eval()
    draft = transformers.AutoModelForCausalLM.from_pretrained(draft_dir).eval()
    model, params = interop.load_hf(target_dir)
    equal, ended = 0, 0
    for row, length in zip(prompts, lengths, strict=True):
        prompt = [int(t) for t in row[:length]]
        with torch.no_grad():
            theirs = target.generate(
                input_ids=torch.tensor([prompt]),
                assistant_model=draft,
                max_new_tokens=max_new_tokens,
            )[0].numpy()
        ours = sampling.autoregressive_sample(
            model,
            params,
            jnp.asarray([prompt], jnp.int32),
            jnp.asarray([length], jnp.int32),
            jax.random.PRNGKey(0),
            max_new_tokens=max_new_tokens,
            eos_id=tok.special.eos_ids,
        )
        ours = np.asarray(ours.sequences[0, : int(ours.lengths[0])])
        equal += int(np.array_equal(ours, theirs))
        ended += int(ours[-1] in tok.special.eos_ids)
    total = len(lengths)
    print(
        f"assisted generation equals greedy on {equal}/{total} prompts "
        f"({ended} ended with an EOS id {list(tok.special.eos_ids)})"
    )
    return equal == total


if __name__ == "__main__":
    ok = main(sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:5]))
    sys.exit(0 if ok else 1)

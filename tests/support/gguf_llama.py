"""A tiny randomly initialised LLaMA written as GGUF, for llama.cpp's server (no weights download).

The vocabulary is SentencePiece-style: the control tokens, the 256 byte tokens llama.cpp falls back
on, and one token per printable ASCII character (with and without the ``▁`` word prefix), so any
text tokenizes and any sampled token decodes. The chat template is ChatML, read by the server from
the file's metadata.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _vocabulary() -> tuple[list[str], list[int]]:
    import gguf

    kinds = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [kinds.UNKNOWN, kinds.CONTROL, kinds.CONTROL, kinds.CONTROL, kinds.CONTROL]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [kinds.BYTE] * 256
    for char in string.ascii_letters + string.digits + string.punctuation:
        tokens += [char, "\u2581" + char]
        types += [kinds.NORMAL, kinds.NORMAL]
    tokens.append("\u2581")
    types.append(kinds.NORMAL)
    return tokens, [int(kind) for kind in types]


def write_tiny_llama_gguf(path: Path, *, seed: int = 0, answer_logits: dict[str, float] | None = None, n_embd: int = 64,
                          n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_ctx: int = 2048) -> Path:
    """Random weights; with ``answer_logits`` (token text -> logit), a model whose first answer token is
    known: its blocks add nothing to the residual stream, so the next-token logits depend only on the
    last prompt token, which ChatML makes the newline after ``assistant``; the listed tokens get the
    given logits there, every other token a random one of ~0.4 standard deviation."""
    import gguf

    tokens, types = _vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("fusionq tiny random llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(4)  # <|im_end|> ends an assistant turn
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:  # numpy (out, in): GGUF stores the reversed order llama.cpp reads
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    head_dim = n_embd // n_head
    embeddings, output = weight(len(tokens), n_embd), weight(len(tokens), n_embd)
    silent = answer_logits is not None  # blocks write zeros: the last token's embedding alone sets the logits
    if answer_logits:
        direction = rng.standard_normal(n_embd).astype(np.float32)
        direction /= np.linalg.norm(direction)
        embeddings[tokens.index("<0x0A>")] = direction * np.sqrt(n_embd)  # RMS-normalised: unchanged
        for token, logit in answer_logits.items():
            output[tokens.index(token)] = direction * (logit / np.sqrt(n_embd))  # . normed state = logit
    writer.add_tensor("token_embd.weight", embeddings)
    for block in range(n_layer):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{block}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{block}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{block}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{block}.attn_output.weight", weight(n_embd, n_embd) * (0 if silent else 1))
        writer.add_tensor(f"blk.{block}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{block}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{block}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{block}.ffn_down.weight", weight(n_embd, n_ff) * (0 if silent else 1))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

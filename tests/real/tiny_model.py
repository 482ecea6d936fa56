"""Writes a tiny llama-architecture GGUF model with random weights, so that llama.cpp's real
server can run in the tests without any download (nothing can be fetched from a model hub here).

Run with the python of the llama.cpp venv (it has gguf and numpy): tiny_model.py OUT.gguf
The weights come from a fixed seed, so every run writes the same model. Its output is nonsense
text, but deterministic under temperature 0, which is all the comparisons need.
"""

from __future__ import annotations

import string
import sys

import gguf
import numpy as np

EMBED = 64  # hidden size
LAYERS = 2
HEADS = 4
FFN = 128
CONTEXT = 2048  # what the model says it was trained for; the server's n_ctx is smaller
SEED = 1234

# A SentencePiece-style vocabulary: control tokens, the 256 byte-fallback tokens llama.cpp
# needs for any character it cannot spell otherwise, then letters and whole words.
WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "two",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "hello",
    "world",
    "sidecar",
    "gateway",
    "model",
    "tiny",
    "test",
    "stream",
    "token",
    "say",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁", *string.ascii_letters, *string.digits, *".,!?'-:;()\"", *string.punctuation]
    pieces += ["▁" + w for w in WORDS] + WORDS
    seen: set[str] = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    # Longer pieces score higher, so that the tokenizer prefers whole words.
    scores = [0.0] * 259 + [float(len(t)) - 100.0 for t in tokens[259:]]
    return tokens, scores, [int(t) for t in types]


def main(path: str) -> None:
    tokens, scores, types = vocabulary()
    vocab = len(tokens)
    rng = np.random.default_rng(SEED)

    def weights(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name("sidecar-tiny-random")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.add_pooling_type(gguf.PoolingType.MEAN)  # embeddings: one vector per input

    output = weights(vocab, EMBED, scale=1.0)
    # No control or byte token is ever the likeliest next one: zero rows give them a logit of
    # 0, below the best of the random rows. Replies are then whole pieces of valid UTF-8 and
    # run to max_tokens, the same split into chunks however they are streamed.
    output[:259] = 0.0
    writer.add_tensor("token_embd.weight", weights(vocab, EMBED, scale=1.0))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weights(EMBED, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(EMBED, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1])

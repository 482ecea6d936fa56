"""Which request parameters each endpoint takes: litellm_params defaults are applied only where they fit.

Sources: the OpenAI API reference for chat, legacy completions and embeddings, plus the sampling
extras vLLM and llama.cpp accept on the same routes.
"""

from __future__ import annotations

from sidecar.routes import Endpoint

_SAMPLING_EXTRAS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "structured_outputs",
        "chat_template_kwargs",
        "mirostat",
        "typical_p",
        "cache_prompt",
    }
)

_SHARED = frozenset(
    {
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "user",
    }
)

CHAT_PARAMS = (
    _SHARED
    | _SAMPLING_EXTRAS
    | frozenset(
        {
            "audio",
            "max_completion_tokens",
            "metadata",
            "modalities",
            "parallel_tool_calls",
            "prediction",
            "prompt_cache_key",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "service_tier",
            "store",
            "tool_choice",
            "tools",
            "top_logprobs",
            "verbosity",
            "web_search_options",
            "functions",
            "function_call",
        }
    )
)

COMPLETION_PARAMS = _SHARED | _SAMPLING_EXTRAS | frozenset({"best_of", "echo", "suffix"})

EMBEDDING_PARAMS = frozenset({"dimensions", "encoding_format", "user"})

# The Responses API (OpenAI's reference; vLLM and llama.cpp take the sampling extras there too).
RESPONSES_PARAMS = _SAMPLING_EXTRAS | frozenset(
    {
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "reasoning",
        "service_tier",
        "store",
        "temperature",
        "text",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)

# Anthropic's Messages API.
MESSAGES_PARAMS = frozenset(
    {
        "max_tokens",
        "metadata",
        "service_tier",
        "stop_sequences",
        "temperature",
        "thinking",
        "top_k",
        "top_p",
    }
)

RERANK_PARAMS = frozenset({"top_n", "return_documents"})

# A deployment's defaults go only where they fit; the form endpoints (audio) take none, as a
# form is passed on as it came but for its model.
BY_ENDPOINT: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: CHAT_PARAMS,
    Endpoint.COMPLETIONS: COMPLETION_PARAMS,
    Endpoint.EMBEDDINGS: EMBEDDING_PARAMS,
    Endpoint.RESPONSES: RESPONSES_PARAMS,
    Endpoint.MESSAGES: MESSAGES_PARAMS,
    Endpoint.COUNT_TOKENS: frozenset(),
    Endpoint.RERANK: RERANK_PARAMS,
    Endpoint.TRANSCRIPTIONS: frozenset(),
    Endpoint.TRANSLATIONS: frozenset(),
    Endpoint.TOKENIZE: frozenset(),
    Endpoint.DETOKENIZE: frozenset(),
}

REQUEST_PARAMS = frozenset().union(*BY_ENDPOINT.values())

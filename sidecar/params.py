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

BY_ENDPOINT: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: CHAT_PARAMS,
    Endpoint.COMPLETIONS: COMPLETION_PARAMS,
    Endpoint.EMBEDDINGS: EMBEDDING_PARAMS,
}

REQUEST_PARAMS = CHAT_PARAMS | COMPLETION_PARAMS | EMBEDDING_PARAMS

"""Provider kinds: how the gateway reaches each kind of provider.

A kind turns the request a client made (in its own protocol: Anthropic Messages or OpenAI
Responses/Chat) into the provider's request (URL, credential, body shape) and the provider's
answer back into the client's protocol. Everything else in the gateway (authorization,
admission, relay, usage taps, pricing, settlement) is the same for every kind: the pipeline
never branches on it.
"""

from __future__ import annotations

from llmproxy.gateway.kinds.azure import AzureKind
from llmproxy.gateway.kinds.base import ClientRequest, CredentialUnreachable, Kind, UpstreamRequest
from llmproxy.gateway.kinds.bedrock import BedrockKind
from llmproxy.gateway.kinds.direct import AnthropicKind, OpenAIKind
from llmproxy.gateway.kinds.vertex import VertexKind

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (AnthropicKind(), OpenAIKind(), BedrockKind(), VertexKind(), AzureKind())
}


def kind_of(name: str) -> Kind:
    return KINDS[name]


__all__ = [
    "KINDS", "ClientRequest", "CredentialUnreachable", "Kind", "UpstreamRequest", "kind_of",
]  # fmt: skip

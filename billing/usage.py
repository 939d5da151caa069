"""What one upstream call used, in the same terms for every protocol."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    """Token counts as the provider reported them.

    ``input_tokens`` never includes cached tokens: Anthropic reports it that way and the
    OpenAI taps subtract ``cached_tokens`` so both protocols add up the same way.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    containers: dict[str, int] = field(default_factory=dict)
    reported: bool = False  # the provider's figures were read
    estimated: bool = False  # some figures are the gateway's estimate, not the provider's

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """Everything the model read: decides the long-context tier."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def add_tool_calls(self, name: str, count: int) -> None:
        if count > 0:
            self.tool_calls[name] = self.tool_calls.get(name, 0) + count

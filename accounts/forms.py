"""Form fields shared by the admin and the management forms."""

from __future__ import annotations

from django import forms


class CommaListField(forms.CharField):
    """A JSON list edited as comma-separated text: "claude-*, gpt-5*"."""

    def prepare_value(self, value):
        if isinstance(value, list):
            return ", ".join(value)
        return value

    def to_python(self, value) -> list[str]:
        if isinstance(value, list):
            return value
        text = super().to_python(value)
        return [item.strip() for item in text.split(",") if item.strip()]

    def has_changed(self, initial, data) -> bool:
        return self.to_python(initial or []) != self.to_python(data)

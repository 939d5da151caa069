"""``python -m llmproxy serve``: see ``llmproxy.server``."""

from llmproxy.server import main

main()

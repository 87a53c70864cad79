"""Integrations with other training frameworks. Each submodule imports its framework
when it is imported itself, so pyrag never depends on them."""

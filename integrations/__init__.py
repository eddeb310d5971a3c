"""Adapters for other libraries, importable as ``triton_rerank.integrations.*``.

Each adapter imports its library only when used; see the modules in this package.
"""

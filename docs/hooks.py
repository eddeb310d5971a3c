"""mkdocs hook: docstrings use Sphinx roles (``:func:`name```); mkdocstrings renders the
name as a code span and leaves the role's text in front of it. Drop that text."""

import re

_ROLE = re.compile(r":(?:func|meth|class|mod|attr|exc|data|obj):(?=<code>)")


def on_page_content(html, page, config, files):
    return _ROLE.sub("", html)

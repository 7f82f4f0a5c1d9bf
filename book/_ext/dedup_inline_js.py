"""Sphinx extension: drop inline <script> blocks that Sphinx 7.x writes twice.

Sphinx < 8.2 adds a script registered with ``app.add_js_file(None, body=...)`` after the builder
started both as filename ``None`` and as ``''`` (sphinx-doc/sphinx#13402), so every page carried
``const THEBE_JS_URL = ...`` twice (sphinx-thebe) and the browser logged
"Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared". Jupyter Book 1.x pins
Sphinx 7, so the book needs this until it moves on; ``tests/test_browser.py`` checks the console.
"""
from __future__ import annotations


def _key(script) -> tuple:
    attrs = getattr(script, "attributes", {}) or {}
    return (getattr(script, "filename", script) or "", getattr(script, "priority", 0), tuple(sorted(attrs.items())))


def _dedup(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _dedup, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Sphinx configuration of the ams-store documentation.

Build (from the repository root, with the ``docs`` extra)::

    sphinx-build -W -b html docs docs/_build/html
    sphinx-build -W -b doctest docs docs/_build/doctest
"""

import doctest
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))      # this checkout's ams
sys.path.insert(0, os.path.join(HERE, "_ext"))  # cli_reference, ams_docs_fixtures

import ams

project = "ams-store"
author = "the AMS developers"
copyright = "the AMS developers"
version = release = ams.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest", "cli_reference"]
exclude_patterns = ["_build"]
templates_path = []

# autodoc: the public API only, in source order, with the constructor's docstring.
autodoc_member_order = "bysource"
autoclass_content = "both"
autodoc_typehints = "signature"

# doctest: only the explicit ``.. doctest::`` / ``.. testcode::`` blocks of the pages run.
# The ``>>>`` examples in docstrings run under pytest (--doctest-modules), in their
# module's namespace; here they would lack it.
doctest_test_doctest_blocks = ""
# Exceptions must match their message too (Sphinx ignores it by default); "..." elides.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1

html_theme = "alabaster"
html_title = f"ams-store {release}"
html_static_path = []

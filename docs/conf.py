"""Sphinx configuration; API pages are generated from the docstrings."""
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'samsa_geo'
author = 'samsa_geo developers'
extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'myst_parser',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'undoc-members': False,
                           'show-inheritance': False}
autodoc_typehints = 'none'
napoleon_custom_sections = [('Shapes', 'params_style')]
myst_heading_anchors = 3
suppress_warnings = ['myst.header', 'myst.xref_missing']
html_theme = 'alabaster'
napoleon_use_ivar = True

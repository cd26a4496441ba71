# Sphinx configuration of the refmarshal documentation (built by `tox -e docs`, warnings are
# errors).  The API reference imports the installed package: tox installs it into the docs
# environment (with its accelerator) before building.
project = "refmarshal"
author = "the refmarshal developers"
copyright = "2026, the refmarshal developers"
extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",          # BENCHMARKS.md and the changelog's sources are Markdown
]
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "Fast Python imports from one image of native-layout code objects",
    "fixed_sidebar": True,
    "page_width": "1180px",      # room for 100-column code blocks and command output
    "sidebar_width": "230px",
}
highlight_language = "text"      # "::" blocks are output and messages, not Python
html_static_path = []
nitpicky = False

# autodoc: members in source order, signatures as written
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
# MyST: headings get anchors so pages can link to a section of BENCHMARKS.md
myst_heading_anchors = 3

project = "refmarshal"
author = "the refmarshal developers"
copyright = "2026, the refmarshal developers"
extensions = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
nitpicky = False

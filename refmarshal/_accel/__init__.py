"""The cffi accelerator (spec section 8): maps an image and fixes it up in place.

Optional: when it is not built, ``refmarshal.Image`` uses the pure-Python reference reader.
"""

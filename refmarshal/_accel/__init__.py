"""The cffi accelerator (spec section 8): the loader (rm_loader.c, loader.py) reads an image's
pages into memory as they are needed and fixes modules up in place; the C writer
(rm_writer.c, writer.py) encodes images from live objects.

Optional: when it is not built, ``refmarshal.Image`` uses the pure-Python reference reader and
``refmarshal.build`` the reference writer.
"""

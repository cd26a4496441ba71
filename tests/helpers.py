import marshal


def compiled(path):
    with open(path, "rb") as fh:
        return compile(fh.read(), str(path), "exec", dont_inherit=True)


def same_code(a, b):
    """Byte-for-byte equal marshal data.  Format version 2 is used because it writes every
    value and every string's interned state but no back-references: those depend on reference
    counts, and objects loaded from an image are immortal (spec [LOAD-4])."""
    return marshal.dumps(a, 2) == marshal.dumps(b, 2)


from refmarshal.graph import walk_code as walk  # noqa: E402,F401

"""What the reference writer and the reference reader both know about stored objects (spec
section 6): the rules that are neither the file's container (``container.py``) nor one
direction's encoding.  The writer applies them to make an object's bytes, the reader checks
an object's bytes against them.
"""

# The first fields of every str object ([STR-3], spec 6.3): ob_refcnt, ob_type (the type code),
# length, hash (-1: not computed), state.
STR_HEAD_FORMAT = "<qQqqI"


def str_kind(value):
    """(bytes per character: 1, 2 or 4; True when every character is ASCII), as CPython
    chooses them for a str of these characters."""
    m = max(map(ord, value), default=0)
    return (1 if m < 256 else 2 if m < 65536 else 4), m < 128


def int_digits(v):
    """The 30-bit digits of abs(v), least significant first (none for 0)."""
    digits, a = [], abs(v)
    while a:
        digits.append(a & 0x3FFFFFFF)
        a >>= 30
    return digits


def reset_value(layout, f):
    """[OBJ-6] the value a field with rule "reset" has in a freshly created object."""
    if f.name == "co_warmup":
        return layout.warmup
    return -1 if f.fresh.startswith("-1") else 0


# Local kinds (Include/internal/pycore_code.h): the same bits in 3.11-3.13.
CO_FAST_LOCAL, CO_FAST_CELL, CO_FAST_FREE = 0x20, 0x40, 0x80


def derived_code_fields(layout, names, kinds, stacksize, co_code):
    """[OBJ-7] the code object fields CPython derives in init_code(), computed the same way."""
    from .bytecode import RESUME     # dis, on first use: importing the writer stays cheap
    nlocals = ncells = nplain = nfree = 0
    for k in kinds:
        if k & CO_FAST_LOCAL:
            nlocals += 1
            ncells += bool(k & CO_FAST_CELL)
        elif k & CO_FAST_CELL:
            ncells += 1
            nplain += 1
        elif k & CO_FAST_FREE:
            nfree += 1
    first = 0
    while first < len(co_code) // 2 and co_code[2 * first] != RESUME:
        first += 1
    out = {"co_nlocalsplus": len(names), "co_nlocals": nlocals, "co_ncellvars": ncells,
           "co_nfreevars": nfree, "_co_firsttraceable": first}
    if layout.frame_specials:
        out["co_framesize"] = len(names) + stacksize + layout.frame_specials
    else:
        out["co_nplaincellvars"] = nplain
    return out

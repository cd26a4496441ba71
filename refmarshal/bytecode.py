"""Bytecode facts the reference implementation needs, per version: THE place for them.

3.12 and 3.13 quicken a code object when they create it (``_PyCode_Quicken`` in init_code()),
so ``co_code_adaptive`` differs from ``co_code``; 3.11 quickens later, while running.  The image
stores the adaptive form ([OBJ-8]); the reference reader recovers ``co_code`` from it the way
``_PyCode_GetCode`` does: every instruction de-specialised, every inline cache entry zeroed.
"""

import dis
import opcode

RESUME = dis.opmap["RESUME"]


def _cache_entries():
    table = opcode._inline_cache_entries
    if isinstance(table, dict):                  # 3.13: keyed by base opcode name
        return {dis.opmap[name]: n for name, n in table.items() if name in dis.opmap}
    return {op: n for op, n in enumerate(table) if n}   # 3.11, 3.12: indexed by opcode


CACHES = _cache_entries()


def deoptimize(adaptive):
    """``co_code`` from the bytes of a fresh ``co_code_adaptive``."""
    out = bytearray(adaptive)
    i, n = 0, len(out)
    while i < n:
        op = dis._deoptop(out[i])
        out[i] = op
        caches = CACHES.get(op, 0)
        out[i + 2:i + 2 + 2 * caches] = bytes(min(2 * caches, n - i - 2))
        i += 2 + 2 * caches
    return bytes(out)

"""The object graph both reference implementations work on, and its marshal encoding.

The reference writer gets a module's exact object graph (sharing, which strings are interned,
``co_localspluskinds``, which Python does not expose) by parsing ``marshal.dumps`` of the
compiled code; the reference reader turns the graph it parsed from an image back into a
marshal stream and lets ``marshal.loads`` build the objects.  Only the types that compiled code
contains are handled; anything else is an error, never a guess.
"""

import struct

from .errors import ImageError


class Str:
    """A string and whether it is interned (which marshal records and identity relies on)."""
    __slots__ = ("value", "interned")

    def __init__(self, value, interned):
        self.value = value
        self.interned = bool(interned)

    def key(self):
        return (self.value, self.interned)

    def __repr__(self):
        return f"Str({self.value!r}{', interned' if self.interned else ''})"


class FrozenSet:
    """A frozenset constant; its items are kept in canonical order (spec [OBJ-9])."""
    __slots__ = ("items",)

    def __init__(self, items):
        self.items = tuple(items)


class Code:
    """A code object's fields, in the order marshal writes them (3.11-3.13), plus the
    bytes of ``co_code_adaptive`` of a freshly created object (filled by the writer)."""
    __slots__ = ("argcount", "posonlyargcount", "kwonlyargcount", "stacksize", "flags", "code",
                 "consts", "names", "localsplusnames", "localspluskinds", "filename", "name",
                 "qualname", "firstlineno", "linetable", "exceptiontable", "adaptive")
    INTS1 = ("argcount", "posonlyargcount", "kwonlyargcount", "stacksize", "flags")
    OBJS1 = ("code", "consts", "names", "localsplusnames", "localspluskinds", "filename", "name",
             "qualname")
    OBJS2 = ("linetable", "exceptiontable")


# marshal type codes (Python/marshal.c); only these occur in compiled code.
FLAG_REF = 0x80
_NONE, _TRUE, _FALSE, _ELLIPSIS = b"N", b"T", b"F", b"."
_INT, _LONG, _BFLOAT, _BCOMPLEX = b"i", b"l", b"g", b"y"
_BYTES, _TUPLE, _SMALL_TUPLE, _FROZENSET, _CODE, _REF = b"s", b"(", b")", b">", b"c", b"r"
_STR_TYPES = {ord("u"): (False, "utf8"), ord("t"): (True, "utf8"),
              ord("a"): (False, "ascii"), ord("A"): (True, "ascii"),
              ord("z"): (False, "short"), ord("Z"): (True, "short")}


def parse_marshal(data):
    """Parse the marshal stream of a code object into the graph above."""
    pos = 0
    refs = []

    def take(n):
        nonlocal pos
        if pos + n > len(data):
            raise ValueError("marshal data truncated")
        chunk = data[pos:pos + n]
        pos += n
        return chunk

    def u32():
        return struct.unpack("<I", take(4))[0]

    def i32():
        return struct.unpack("<i", take(4))[0]

    def obj():
        code = take(1)[0]
        flag, code = code & FLAG_REF, bytes((code & ~FLAG_REF,))
        if code == _REF:
            return refs[u32()]
        if code in (_NONE, _TRUE, _FALSE, _ELLIPSIS):
            return {_NONE: None, _TRUE: True, _FALSE: False, _ELLIPSIS: Ellipsis}[code]
        slot = len(refs)
        if flag:
            refs.append(None)        # reserved before children, as r_ref_reserve does
        if code == _INT:
            v = i32()
        elif code == _LONG:
            n = i32()
            digits = struct.unpack(f"<{abs(n)}H", take(2 * abs(n)))
            v = sum(d << (15 * i) for i, d in enumerate(digits))
            v = -v if n < 0 else v
        elif code == _BFLOAT:
            v = struct.unpack("<d", take(8))[0]
        elif code == _BCOMPLEX:
            v = complex(*struct.unpack("<dd", take(16)))
        elif code == _BYTES:
            v = bytes(take(u32()))
        elif code[0] in _STR_TYPES:
            interned, how = _STR_TYPES[code[0]]
            n = take(1)[0] if how == "short" else u32()
            raw = take(n)
            v = Str(raw.decode("latin-1") if how != "utf8" else raw.decode("utf-8", "surrogatepass"),
                    interned)
        elif code in (_TUPLE, _SMALL_TUPLE):
            n = take(1)[0] if code == _SMALL_TUPLE else u32()
            v = tuple(obj() for _ in range(n))
        elif code == _FROZENSET:
            v = FrozenSet(obj() for _ in range(u32()))
        elif code == _CODE:
            v = Code()
            if flag:
                refs[slot] = v
            for f in Code.INTS1:
                setattr(v, f, i32())
            for f in Code.OBJS1:
                setattr(v, f, obj())
            v.firstlineno = i32()
            for f in Code.OBJS2:
                setattr(v, f, obj())
            v.adaptive = None
        else:
            raise ValueError(f"marshal type {code!r} does not occur in compiled code")
        if flag:
            refs[slot] = v
        return v

    root = obj()
    if pos != len(data):
        raise ValueError("trailing data after marshal object")
    return root


def walk_code(co):
    """A live code object and all code objects nested in its constants, in pre-order."""
    yield co
    for c in co.co_consts:
        if type(c) is type(co):
            yield from walk_code(c)


def walk_nodes(node):
    """The same walk over Code nodes of a graph."""
    yield node
    for c in node.consts:
        if type(c) is Code:
            yield from walk_nodes(c)


def _children(v):
    if type(v) is tuple:
        return v
    if type(v) is FrozenSet:
        return v.items
    if type(v) is Code:
        return [getattr(v, f) for f in Code.OBJS1 + Code.OBJS2]
    return ()


def _is_ref_candidate(v):
    return not (v is None or v is True or v is False or v is Ellipsis)


def emit_marshal(root):
    """The marshal stream (format version 4) of a graph; objects reached more than once are
    written once with FLAG_REF and then referenced, so ``marshal.loads`` shares them too."""
    seen = {}
    stack = [root]
    while stack:                                  # count how often each object is reached
        v = stack.pop()
        if not _is_ref_candidate(v):
            continue
        k = id(v)
        seen[k] = seen.get(k, 0) + 1
        if seen[k] == 1:
            stack.extend(_children(v))
    index = {}
    out = bytearray()

    def w(v):
        nonlocal out
        if not _is_ref_candidate(v):
            out += _NONE if v is None else _TRUE if v is True else _FALSE if v is False else _ELLIPSIS
            return
        k = id(v)
        if k in index:
            out += _REF + struct.pack("<I", index[k])
            return
        flag = 0
        if seen.get(k, 0) > 1:
            flag = FLAG_REF
            index[k] = len(index)
        t = type(v)
        if t is int:
            if -2**31 <= v < 2**31:
                out.append(_INT[0] | flag)
                out += struct.pack("<i", v)
            else:
                digits, a = [], abs(v)
                while a:
                    digits.append(a & 0x7FFF)
                    a >>= 15
                out.append(_LONG[0] | flag)
                out += struct.pack("<i", -len(digits) if v < 0 else len(digits))
                out += struct.pack(f"<{len(digits)}H", *digits)
        elif t is float:
            out.append(_BFLOAT[0] | flag)
            out += struct.pack("<d", v)
        elif t is complex:
            out.append(_BCOMPLEX[0] | flag)
            out += struct.pack("<dd", v.real, v.imag)
        elif t is bytes:
            out.append(_BYTES[0] | flag)
            out += struct.pack("<I", len(v)) + v
        elif t is Str:
            raw = v.value.encode("utf-8", "surrogatepass")
            out.append((ord("t") if v.interned else ord("u")) | flag)
            out += struct.pack("<I", len(raw)) + raw
        elif t is tuple:
            out.append(_TUPLE[0] | flag)
            out += struct.pack("<I", len(v))
            for item in v:
                w(item)
        elif t is FrozenSet:
            out.append(_FROZENSET[0] | flag)
            out += struct.pack("<I", len(v.items))
            for item in v.items:
                w(item)
        elif t is Code:
            out.append(_CODE[0] | flag)
            for f in Code.INTS1:
                out += struct.pack("<i", getattr(v, f))
            for f in Code.OBJS1:
                w(getattr(v, f))
            out += struct.pack("<i", v.firstlineno)
            for f in Code.OBJS2:
                w(getattr(v, f))
        else:
            raise ImageError(f"cannot encode object of type {t.__name__}")

    w(root)
    return bytes(out)

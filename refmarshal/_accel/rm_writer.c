/* refmarshal's second writer: dumps live objects from their actual memory (spec sections 4-6).
 *
 * Every stored object is a memcpy of the live object, sized as CPython sized it
 * (tp_basicsize + tp_itemsize * items; for str, header + characters + NUL).  Then exactly the
 * fields the spec calls process-dependent are normalised, each by its C name (never by an
 * offset from the spec): refcounts, type pointers (TYPE words), pointers (tagged words and
 * the bitmap marking them), caches, padding.  If the spec's tables disagree with the compiler's
 * layout, this writer's bytes differ from the reference writer's: that is what it is for.
 *
 * C places each module's objects (and so orders the string table) and encodes every object;
 * Python assembles the file (refmarshal/_accel/writer.py).  Objects travel
 * through a bound Python list, as in rm_loader.c.  cffi releases the GIL: every entry point
 * takes it.
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include "internal/pycore_gc.h"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rm_common.h"
#include "rm_writer.h"

/* ---- Version differences: the one place for them (C writer) --------------------------- */
#if PY_VERSION_HEX >= 0x030d0000 && PY_VERSION_HEX < 0x030e0000
#  define NEED_OPCODE_METADATA                       /* a private copy of _PyOpcode_Caches */
#  include "internal/pycore_opcode_metadata.h"
#elif PY_VERSION_HEX >= 0x030c0000 && PY_VERSION_HEX < 0x030d0000
#  define NEED_OPCODE_TABLES
#  include "internal/pycore_opcode.h"
#endif

#if PY_VERSION_HEX >= 0x030c0000 && PY_VERSION_HEX < 0x030e0000
#  include "internal/pycore_code.h"
#  include "internal/pycore_long.h"
#  define RM_REFCNT _Py_IMMORTAL_REFCNT                 /* [OBJ-6] immortal */
#  define RM_DIGITS(o) ((Py_ssize_t)_PyLong_DigitCount((PyLongObject *)(o)))
#  define RM_STATE_PAD_END sizeof(PyASCIIObject)       /* state's padding ends the header */
static void reset_str_version(PyASCIIObject *a, const PyASCIIObject *s) {
    (void)a; (void)s;                                   /* statically_allocated stays 0 */
}
static void reset_str_compact(PyCompactUnicodeObject *c) { c->utf8_length = 0; c->utf8 = NULL; }
static void reset_code_version(PyCodeObject *c) {
    c->co_version = 0;                                  /* the loader draws one ([LOAD-3]) */
    c->_co_cached = NULL;
    c->_co_instrumentation_version = 0;
    c->_co_monitoring = NULL;
#  if PY_VERSION_HEX >= 0x030d0000
    c->co_executors = NULL;
#  endif
}
/* What _PyCode_Quicken() (Python/specialize.c) does to a new code object's co_code: the
   first cache entry of each specialisable instruction gets its initial counter; 3.12 also
   fuses some pairs into superinstructions. */
static void quicken(_Py_CODEUNIT *instr, Py_ssize_t n) {
#  if PY_VERSION_HEX >= 0x030d0000
#    if ENABLE_SPECIALIZATION
    for (Py_ssize_t i = 0; i < n; i++) {
        int opcode = instr[i].op.code, caches = _PyOpcode_Caches[opcode];
        if (!caches) continue;
        switch (opcode) {
        case JUMP_BACKWARD: instr[i + 1].counter = initial_jump_backoff_counter(); break;
        case POP_JUMP_IF_FALSE: case POP_JUMP_IF_TRUE:
        case POP_JUMP_IF_NONE: case POP_JUMP_IF_NOT_NONE:
            instr[i + 1].cache = 0x5555;                /* branch history: alternating bits */
            break;
        default: instr[i + 1].counter = adaptive_counter_warmup(); break;
        }
        i += caches;
    }
#    endif
#  else
    int opcode = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int previous = opcode;
        opcode = instr[i].op.code;
        int caches = _PyOpcode_Caches[opcode];
        if (caches) {
            instr[i + 1].cache = adaptive_counter_warmup();
            i += caches;
            continue;
        }
        switch (previous << 8 | opcode) {
        case LOAD_CONST << 8 | LOAD_FAST: instr[i - 1].op.code = LOAD_CONST__LOAD_FAST; break;
        case LOAD_FAST << 8 | LOAD_CONST: instr[i - 1].op.code = LOAD_FAST__LOAD_CONST; break;
        case LOAD_FAST << 8 | LOAD_FAST: instr[i - 1].op.code = LOAD_FAST__LOAD_FAST; break;
        case STORE_FAST << 8 | LOAD_FAST: instr[i - 1].op.code = STORE_FAST__LOAD_FAST; break;
        case STORE_FAST << 8 | STORE_FAST: instr[i - 1].op.code = STORE_FAST__STORE_FAST; break;
        }
    }
#  endif
}
#elif PY_VERSION_HEX >= 0x030b0000 && PY_VERSION_HEX < 0x030c0000
#  include "internal/pycore_code.h"
#  define RM_REFCNT 999999999                          /* [OBJ-6] what static objects use */
#  define RM_DIGITS(o) Py_ABS(Py_SIZE(o))
#  define RM_STATE_PAD_END offsetof(PyASCIIObject, wstr)
static void reset_str_version(PyASCIIObject *a, const PyASCIIObject *s) {
    a->state.ready = s->state.ready;
    a->wstr = NULL;
}
static void reset_str_compact(PyCompactUnicodeObject *c) {
    c->utf8_length = 0; c->utf8 = NULL; c->wstr_length = 0;
}
static void reset_code_version(PyCodeObject *c) {
    c->co_warmup = QUICKENING_INITIAL_WARMUP_VALUE;
    c->_co_linearray_entry_size = 0;
    c->_co_code = NULL;
    c->_co_linearray = NULL;
}
/* 3.11 quickens only once a code object has warmed up: a new one holds co_code itself. */
static void quicken(_Py_CODEUNIT *instr, Py_ssize_t n) { (void)instr; (void)n; }
#else
#  error "refmarshal supports CPython 3.11-3.13"
#endif

#define ALIGN8(n) (((n) + (RM_ALIGN - 1)) & ~(uint64_t)(RM_ALIGN - 1))      /* [OBJ-1] */

static PyObject *box;             /* the Python list objects travel through */

int rm_writer_bind(const char *module, const char *attr) {
    return rm_bind_list(module, attr, &box);
}

/* [OBJ-5] singleton id of an object, by value as the spec defines it, or -1. */
static long singleton_id(PyObject *o) {
    if (o == Py_None) return C_NONE;
    if (o == Py_True) return C_TRUE;
    if (o == Py_False) return C_FALSE;
    if (o == Py_Ellipsis) return C_ELLIPSIS;
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyTuple_Type) return PyTuple_GET_SIZE(o) ? -1 : C_EMPTY_TUPLE;
    if (t == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        return n == 0 ? C_EMPTY_BYTES : n == 1 ? C_BYTE + (unsigned char)PyBytes_AS_STRING(o)[0] : -1;
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(o);
        if (n == 0) return C_EMPTY_STR;
        /* an interned one-character str is stored: in 3.11 and 3.12 it is not the singleton */
        if (n == 1 && PyUnicode_CHECK_INTERNED(o)) return -1;
        Py_UCS4 c = n == 1 ? PyUnicode_READ_CHAR(o, 0) : 256;
        return c < 256 ? C_LATIN1 + (long)c : -1;
    }
    if (t == &PyLong_Type) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(o, &overflow);
        return !overflow && v >= SMALL_INT_MIN && v <= SMALL_INT_MAX ? C_SMALL_INT + v - SMALL_INT_MIN : -1;
    }
    return -1;
}

/* A code object's pointer fields, visited in offset order ([OBJ-2]): sorted once by the
   compiler's offsets, not listed in the spec's order. */
static size_t code_refs[] = {
    offsetof(PyCodeObject, co_consts), offsetof(PyCodeObject, co_names),
    offsetof(PyCodeObject, co_exceptiontable), offsetof(PyCodeObject, co_localsplusnames),
    offsetof(PyCodeObject, co_localspluskinds), offsetof(PyCodeObject, co_filename),
    offsetof(PyCodeObject, co_name), offsetof(PyCodeObject, co_qualname),
    offsetof(PyCodeObject, co_linetable),
};
#define N_CODE_REFS (sizeof code_refs / sizeof code_refs[0])

static void sort_code_refs(void) {
    static int sorted;
    if (sorted) return;
    sorted = 1;
    for (size_t i = 1; i < N_CODE_REFS; i++)
        for (size_t j = i; j && code_refs[j - 1] > code_refs[j]; j--) {
            size_t t = code_refs[j]; code_refs[j] = code_refs[j - 1]; code_refs[j - 1] = t;
        }
}

/* ---- A pointer-keyed hash map (open addressing) ----------------------------------------- */
typedef struct { const void *key; uintptr_t val; } rm_slot;
typedef struct { rm_slot *t; size_t cap, n; } rm_map;

static size_t map_pos(const rm_map *m, const void *key) {
    return (size_t)(((uintptr_t)key >> 3) * 0x9E3779B97F4A7C15ull >> 17) & (m->cap - 1);
}

static int map_get(const rm_map *m, const void *key, uintptr_t *val) {
    if (!m->cap) return 0;
    for (size_t i = map_pos(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (m->t[i].key == key) { *val = m->t[i].val; return 1; }
        if (!m->t[i].key) return 0;
    }
}

static int map_put(rm_map *m, const void *key, uintptr_t val) {   /* key must be absent */
    if (2 * (m->n + 1) > m->cap) {
        rm_map bigger = { calloc(m->cap ? 2 * m->cap : 64, sizeof(rm_slot)), m->cap ? 2 * m->cap : 64, 0 };
        if (!bigger.t) return -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->t[i].key) map_put(&bigger, m->t[i].key, m->t[i].val);
        free(m->t);
        *m = bigger;
    }
    size_t i = map_pos(m, key);
    while (m->t[i].key) i = (i + 1) & (m->cap - 1);
    m->t[i].key = key; m->t[i].val = val; m->n++;
    return 0;
}

/* ---- Planning one module's segment ([OBJ-1], [OBJ-2]) ----------------------------------- */
typedef struct { PyObject *obj; uint64_t off, size; int tcode; } rm_item;

struct rm_plan {
    PyObject *root;               /* the module's code object */
    PyObject *frozen;             /* the tuples standing for frozensets ([OBJ-9]), kept alive */
    rm_item *items;               /* placed objects in placement order */
    size_t n, cap;
    rm_map placed;                /* object -> offset of the PyObject in the segment */
    rm_map fsets;                 /* frozenset -> the tuple standing for it */
    rm_map local;                 /* interned str only this module uses -> its offset ([SEG-5]) */
    PyObject *local_strs;         /* those strs, kept alive */
    uint64_t size;
};

static size_t str_header(PyObject *s) {
    return PyUnicode_IS_ASCII(s) ? sizeof(PyASCIIObject) : sizeof(PyCompactUnicodeObject);
}

/* A compact str whose characters follow its header, as every str the compiler makes is. */
static int plain_str(PyObject *s) {
    return PyUnicode_IS_COMPACT(s)
           && (unsigned char *)PyUnicode_DATA(s) == (unsigned char *)s + str_header(s);
}

/* Bytes a str object takes up to its NUL terminator (spec 6.3). */
static uint64_t str_used(PyObject *s) {
    return str_header(s) + (uint64_t)(PyUnicode_GET_LENGTH(s) + 1) * PyUnicode_KIND(s);
}

/* Type code, bytes of the object as CPython allocated it, and bytes before it (GC header). */
static int extent(PyObject *o, uint64_t *size, uint64_t *pre) {
    PyTypeObject *t = Py_TYPE(o);
    Py_ssize_t items;
    int tcode;
    if (t == &PyUnicode_Type) {   /* [SEG-4] a string that is not interned */
        if (!plain_str(o)) return -1;
        *size = str_used(o);
        *pre = 0;
        return T_STR;
    }
    if (t == &PyTuple_Type) { tcode = T_TUPLE; items = Py_SIZE(o); }
    else if (t == &PyBytes_Type) { tcode = T_BYTES; items = Py_SIZE(o); }
    else if (t == &PyCode_Type) { tcode = T_CODE; items = Py_SIZE(o); }
    else if (t == &PyLong_Type) { tcode = T_INT; items = RM_DIGITS(o); }
    else if (t == &PyFloat_Type) { tcode = T_FLOAT; items = 0; }
    else if (t == &PyComplex_Type) { tcode = T_COMPLEX; items = 0; }
    else return -1;
    *size = (uint64_t)t->tp_basicsize + (uint64_t)t->tp_itemsize * (uint64_t)items;
    *pre = PyType_IS_GC(t) ? sizeof(PyGC_Head) : 0;
    return tcode;
}

static int add_string(PyObject *found, PyObject *s) {
    PyObject *key = Py_BuildValue("(OO)", s, Py_True);
    if (!key) return -1;
    PyObject *r = PyDict_SetDefault(found, key, s);
    Py_DECREF(key);
    return r ? 0 : -1;
}

/* The tuple that stands for a frozenset: its items in canonical order, from Python. */
static PyObject *frozen_tuple(rm_plan *p, PyObject *fs, PyObject *order) {
    uintptr_t v;
    if (map_get(&p->fsets, fs, &v)) return (PyObject *)v;
    PyObject *t = PyObject_CallOneArg(order, fs);
    if (!t) return NULL;
    int ok = PyTuple_CheckExact(t) && PyTuple_GET_SIZE(t) == PySet_GET_SIZE(fs)
             && PyList_Append(p->frozen, t) == 0 && map_put(&p->fsets, fs, (uintptr_t)t) == 0;
    Py_DECREF(t);                 /* p->frozen holds it */
    return ok ? t : NULL;
}

void rm_plan_free(rm_plan *p) {
    if (!p) return;
    PyGILState_STATE g = PyGILState_Ensure();
    Py_XDECREF(p->root); Py_XDECREF(p->frozen); Py_XDECREF(p->local_strs);
    free(p->items); free(p->placed.t); free(p->fsets.t); free(p->local.t); free(p);
    PyGILState_Release(g);
}

static int push(PyObject ***stack, size_t *n, size_t *cap, PyObject *o) {
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 256;
        PyObject **s = realloc(*stack, c * sizeof *s);
        if (!s) return -1;
        *stack = s; *cap = c;
    }
    (*stack)[(*n)++] = o;
    return 0;
}

/* Depth-first pre-order from the code object in box[0]; interned strings go into the dict
   box[1] ((str, True) -> str), frozensets are ordered by calling box[2] (the box:
   rm_writer.h). */
rm_plan *rm_plan_module(char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    rm_plan *p = calloc(1, sizeof *p);
    PyObject **stack = NULL;
    size_t sn = 0, scap = 0;
    if (!p) FAIL("out of memory");
    if (!box || PyList_GET_SIZE(box) != 3) FAIL("writer not bound");
    sort_code_refs();
    PyObject *root = PyList_GET_ITEM(box, 0), *found = PyList_GET_ITEM(box, 1);
    PyObject *order = PyList_GET_ITEM(box, 2);
    if (!PyCode_Check(root) || !PyDict_Check(found)) FAIL("expected a code object and a dict");
    p->root = Py_NewRef(root);
    if (!(p->frozen = PyList_New(0)) || push(&stack, &sn, &scap, root) < 0) FAIL("out of memory");
    while (sn) {
        PyObject *o = stack[--sn];
        uintptr_t seen;
        if (singleton_id(o) >= 0) continue;
        if (PyUnicode_CheckExact(o) && PyUnicode_CHECK_INTERNED(o)) {   /* [STR-3] */
            if (add_string(found, o) < 0) FAIL("cannot record a string");
            continue;
        }
        if (PyFrozenSet_CheckExact(o) && !(o = frozen_tuple(p, o, order)))
            FAIL("cannot order a frozenset's items");
        if (map_get(&p->placed, o, &seen)) continue;
        uint64_t size, pre;
        int tcode = extent(o, &size, &pre);
        if (tcode < 0) FAIL("cannot store object of type %.100s", Py_TYPE(o)->tp_name);
        if (p->n == p->cap) {
            size_t c = p->cap ? 2 * p->cap : 64;
            rm_item *it = realloc(p->items, c * sizeof *it);
            if (!it) FAIL("out of memory");
            p->items = it; p->cap = c;
        }
        uint64_t off = p->size + pre;
        p->items[p->n++] = (rm_item){o, off, size, tcode};
        if (map_put(&p->placed, o, off) < 0) FAIL("out of memory");
        p->size = ALIGN8(off + size);
        if (tcode == T_TUPLE) {
            for (Py_ssize_t i = PyTuple_GET_SIZE(o); i-- > 0;)
                if (push(&stack, &sn, &scap, PyTuple_GET_ITEM(o, i)) < 0) FAIL("out of memory");
        } else if (tcode == T_CODE) {
            for (size_t i = N_CODE_REFS; i-- > 0;)
                if (push(&stack, &sn, &scap, *(PyObject **)((char *)o + code_refs[i])) < 0)
                    FAIL("out of memory");
        }
    }
    free(stack);
    PyGILState_Release(g);
    return p;
fail:
    if (PyErr_Occurred()) PyErr_Clear();
    free(stack);
    PyGILState_Release(g);
    rm_plan_free(p);
    return NULL;
}

static int add_item(rm_plan *p, PyObject *o, uint64_t off, uint64_t size, int tcode) {
    if (p->n == p->cap) {
        size_t c = p->cap ? 2 * p->cap : 64;
        rm_item *it = realloc(p->items, c * sizeof *it);
        if (!it) return -1;
        p->items = it; p->cap = c;
    }
    p->items[p->n++] = (rm_item){o, off, size, tcode};
    return 0;
}

/* [SEG-5] The interned strings in the list box[0] (those only this module uses, in its order
   of first use) are placed after everything else (the box: rm_writer.h). */
int rm_plan_add_strings(rm_plan *p, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *list;
    if (!box || PyList_GET_SIZE(box) != 1 || !PyList_Check(list = PyList_GET_ITEM(box, 0)))
        FAIL("expected the list of strings");
    Py_XSETREF(p->local_strs, Py_NewRef(list));
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *s = PyList_GET_ITEM(list, i);
        uint64_t size, pre;
        if (!PyUnicode_CheckExact(s) || extent(s, &size, &pre) != T_STR)
            FAIL("string %zd is not a compact str", i);
        if (add_item(p, s, p->size, size, T_STR) < 0 || map_put(&p->local, s, p->size) < 0)
            FAIL("out of memory");
        p->size = ALIGN8(p->size + size);
    }
    rc = 0;
fail:
    if (PyErr_Occurred()) PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}

/* ---- Encoding one module's segment (spec 5.3, 6) -------------------------------------- */
typedef struct {
    rm_plan *p;
    unsigned char *seg;
    uint64_t seg_addr;            /* preferred_base + file offset of the segment */
    PyObject *index;              /* (str, True) -> string index */
    uint64_t *bitmap;             /* [SEG-2] one bit per word of the segment */
} rm_enc;

/* [SEG-3] A tagged word: addresses (PTR, FROZENSET) carry the tag in their low bits, ids and
   indices are shifted left to make room for it; its bit is set in the bitmap. */
static int set_word(rm_enc *e, void *word, uint64_t value, int kind) {
    uint64_t slot = (uint64_t)((unsigned char *)word - e->seg) / 8;
    uint64_t w = kind == R_PTR || kind == R_FROZENSET || kind == R_LSTR
                 ? value | (uint64_t)kind : value << TAG_BITS | (uint64_t)kind;
    memcpy(word, &w, 8);
    e->bitmap[slot / 64] |= (uint64_t)1 << (slot % 64);
    return 0;
}

/* A pointer copied from memory becomes the tagged word that says what it points to (5.3). */
static int convert_ref(rm_enc *e, PyObject **word, char *err, int errlen) {
    PyObject *target = *word;
    uintptr_t v;
    long cid = singleton_id(target);
    if (cid >= 0) return set_word(e, word, (uint64_t)cid, R_CONST);
    if (PyUnicode_CheckExact(target) && PyUnicode_CHECK_INTERNED(target)
        && map_get(&e->p->local, target, &v))
        return set_word(e, word, e->seg_addr + v, R_LSTR);
    if (PyUnicode_CheckExact(target) && PyUnicode_CHECK_INTERNED(target)) {
        PyObject *key = Py_BuildValue("(OO)", target, Py_True);
        PyObject *idx = key ? PyDict_GetItemWithError(e->index, key) : NULL;
        Py_XDECREF(key);
        unsigned long long i = idx ? PyLong_AsUnsignedLongLong(idx) : (unsigned long long)-1;
        if (i == (unsigned long long)-1) {
            PyErr_Clear();
            snprintf(err, errlen, "a string is not in the string table");
            return -1;
        }
        return set_word(e, word, i, R_STR);
    }
    if (PyFrozenSet_CheckExact(target)) {
        if (!map_get(&e->p->fsets, target, &v) || !map_get(&e->p->placed, (void *)v, &v)) {
            snprintf(err, errlen, "a frozenset was not placed");
            return -1;
        }
        return set_word(e, word, e->seg_addr + v, R_FROZENSET);
    }
    if (!map_get(&e->p->placed, target, &v)) {
        snprintf(err, errlen, "a %.100s was not placed", Py_TYPE(target)->tp_name);
        return -1;
    }
    return set_word(e, word, e->seg_addr + v, R_PTR);
}

/* [OBJ-8] co_code_adaptive as a new code object has it, whatever the live one has been
   through (specialised while running, instrumented for sys.monitoring): CPython's own
   de-specialised, de-instrumented co_code, quickened as init_code() does. */
static int fresh_adaptive(PyCodeObject *c, PyObject *live) {
    PyObject *code = PyCode_GetCode((PyCodeObject *)live);
    if (!code) return -1;
    int ok = PyBytes_GET_SIZE(code) == 2 * Py_SIZE(live);
    if (ok) {
        memcpy(c->co_code_adaptive, PyBytes_AS_STRING(code), PyBytes_GET_SIZE(code));
        quicken((_Py_CODEUNIT *)c->co_code_adaptive, Py_SIZE(live));
    }
    Py_DECREF(code);
    return ok ? 0 : -1;
}

static void reset_code(PyCodeObject *c) {
    c->co_weakreflist = NULL;
    c->co_extra = NULL;
    /* the padding hole between _co_firsttraceable and co_extra: malloc's leftovers */
    size_t from = offsetof(PyCodeObject, _co_firsttraceable) + sizeof c->_co_firsttraceable;
    memset((char *)c + from, 0, offsetof(PyCodeObject, co_extra) - from);
    reset_code_version(c);
}

/* A str's bytes up to its NUL, normalised (spec 6.3); its ob_type holds T_STR untagged. */
static void encode_str(unsigned char *dst, PyObject *s, size_t used) {
    memcpy(dst, s, used);
    PyASCIIObject *a = (PyASCIIObject *)dst;
    const PyASCIIObject *src = (const PyASCIIObject *)s;
    a->ob_base.ob_refcnt = RM_REFCNT;
    a->ob_base.ob_type = (PyTypeObject *)(uintptr_t)T_STR;
    a->hash = -1;
    memset(&a->state, 0, sizeof a->state);   /* interned 0 ([STR-4]), unnamed bits 0 */
    a->state.kind = src->state.kind;
    a->state.compact = src->state.compact;
    a->state.ascii = src->state.ascii;
    size_t from = offsetof(PyASCIIObject, state) + sizeof a->state;
    memset(dst + from, 0, RM_STATE_PAD_END - from);
    reset_str_version(a, src);
    if (!src->state.ascii) reset_str_compact((PyCompactUnicodeObject *)dst);
}

/* One object, copied at its offset from its live memory, then normalised. */
static int encode_item(rm_enc *e, const rm_item *it, char *err, int errlen) {
    unsigned char *dst = e->seg + it->off;
    if (it->tcode == T_STR) encode_str(dst, it->obj, it->size);
    else memcpy(dst, it->obj, it->size);
    PyObject *d = (PyObject *)dst;
    d->ob_refcnt = RM_REFCNT;
    if (set_word(e, &d->ob_type, (uint64_t)it->tcode, R_TYPE) < 0) goto full;
    switch (it->tcode) {
    case T_TUPLE:                 /* its GC header stays zero: untracked (6.1) */
        for (Py_ssize_t i = 0; i < Py_SIZE(it->obj); i++)
            if (convert_ref(e, &((PyTupleObject *)d)->ob_item[i], err, errlen) < 0) return -1;
        break;
    case T_BYTES:
        _Py_COMP_DIAG_PUSH
        _Py_COMP_DIAG_IGNORE_DEPR_DECLS
        ((PyBytesObject *)d)->ob_shash = -1;
        _Py_COMP_DIAG_POP
        break;
    case T_CODE:
        for (size_t i = 0; i < N_CODE_REFS; i++)
            if (convert_ref(e, (PyObject **)(dst + code_refs[i]), err, errlen) < 0) return -1;
        reset_code((PyCodeObject *)d);
        if (fresh_adaptive((PyCodeObject *)d, it->obj) < 0) {
            snprintf(err, errlen, "cannot get a code object's bytecode");
            return -1;
        }
        break;
    }
    return 0;
full:
    snprintf(err, errlen, "segment too large or out of memory");
    return -1;
}

/* Encodes the plan with the string index dict in box[0]; box becomes
   [segment bytes, bitmap bytes, root offset] (the box: rm_writer.h). */
int rm_encode_module(rm_plan *p, unsigned long long seg_addr, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    rm_enc e = {p, NULL, seg_addr, NULL, NULL};
    PyObject *data = NULL, *bits = NULL, *out = NULL;
    int rc = -1;
    uintptr_t root = 0;
    uint64_t nbits = rm_bitmap_bytes(p->size);
    if (!box || PyList_GET_SIZE(box) != 1 || !PyDict_Check(PyList_GET_ITEM(box, 0)))
        FAIL("expected the string index");
    e.index = PyList_GET_ITEM(box, 0);
    if (!(data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)p->size))
        || !(bits = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nbits)))
        FAIL("out of memory");
    e.seg = (unsigned char *)PyBytes_AS_STRING(data);
    e.bitmap = (uint64_t *)PyBytes_AS_STRING(bits);
    memset(e.seg, 0, p->size);
    memset(e.bitmap, 0, nbits);
    for (size_t i = 0; i < p->n; i++)
        if (encode_item(&e, &p->items[i], err, errlen) < 0) goto fail;
    map_get(&p->placed, p->root, &root);
    if (!(out = Py_BuildValue("[OOK]", data, bits, (unsigned long long)root))
        || PyList_SetSlice(box, 0, PY_SSIZE_T_MAX, out) < 0)
        FAIL("out of memory");
    rc = 0;
fail:
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(data); Py_XDECREF(bits); Py_XDECREF(out);
    PyGILState_Release(g);
    return rc;
}

/* ---- The string heap (spec 4, 6.3) ---------------------------------------------------- */

/* box[0] is the list of the string table's str objects in index order; box becomes
   [string heap bytes], and sizes[i] the bytes of object i including its padding (the box:
   rm_writer.h). */
int rm_encode_strings(unsigned int *sizes, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *heap = NULL, *list;
    int rc = -1;
    uint64_t total = 0;
    if (!box || PyList_GET_SIZE(box) != 1 || !PyList_Check(PyList_GET_ITEM(box, 0)))
        FAIL("expected the list of strings");
    list = PyList_GET_ITEM(box, 0);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *s = PyList_GET_ITEM(list, i);
        if (!PyUnicode_CheckExact(s) || !plain_str(s))
            FAIL("string %zd is not a compact str", i);
        uint64_t size = ALIGN8(str_used(s));
        if (size > UINT32_MAX) FAIL("string %zd too large", i);
        sizes[i] = (unsigned int)size;
        total += size;
    }
    if (!(heap = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total))) FAIL("out of memory");
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(heap);
    memset(dst, 0, total);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *s = PyList_GET_ITEM(list, i);
        encode_str(dst, s, str_used(s));
        dst += sizes[i];
    }
    PyObject *out = Py_BuildValue("[O]", heap);
    if (!out || PyList_SetSlice(box, 0, PY_SSIZE_T_MAX, out) < 0) {
        Py_XDECREF(out);
        FAIL("out of memory");
    }
    Py_DECREF(out);
    rc = 0;
fail:
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(heap);
    PyGILState_Release(g);
    return rc;
}

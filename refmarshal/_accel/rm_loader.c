/* refmarshal accelerator: map an image and fix up one module's objects in place (spec section 8).
 *
 * C does the mechanics (mapping, relocation, interning, code-object set-up); Python decides
 * policy (which image, which module, what to do on failure).  Every failure is reported as a
 * message and leaves the module untouched: relocations are all validated before any is applied.
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include "internal/pycore_interp.h"
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rm_loader.h"

/* ---- Version differences: the one place for them (C side) ------------------------------- */
#if PY_VERSION_HEX >= 0x030d0000 && PY_VERSION_HEX < 0x030e0000
#  define RM_CODE_VERSION 1       /* co_version from interp->func_state.next_version */
#  define RM_CODE_WATCHERS 1
#elif PY_VERSION_HEX >= 0x030c0000
#  define RM_CODE_VERSION 2       /* co_version from the hidden _Py_next_func_version: drawn
                                     by creating an empty code object (the only public way) */
#  define RM_CODE_WATCHERS 1
#elif PY_VERSION_HEX >= 0x030b0000
#  define RM_CODE_VERSION 0       /* 3.11 has no co_version */
#  define RM_CODE_WATCHERS 0
#else
#  error "refmarshal supports CPython 3.11-3.13"
#endif
#ifdef Py_DEBUG
#  error "debug builds make interned strings mortal at exit: not supported (spec [LOAD-4])"
#endif

/* ---- Format constants (spec sections 2-5; refmarshal/format.py has the same) ------------ */
#define HEADER_SIZE 256
#define MODULE_SIZE 80
#define STRING_SIZE 16
enum { R_TYPE, R_CONST, R_STR, R_FROZENSET, R_PTR };
enum { T_STR = 1, T_BYTES, T_TUPLE, T_INT, T_FLOAT, T_COMPLEX, T_CODE };
#define C_SMALL_INT 0x100
#define C_LATIN1 0x300
#define C_BYTE 0x400
#define C_END 0x500

struct rm_image {
    unsigned char *base;          /* where the file is mapped */
    uint64_t size;
    uint64_t preferred;           /* preferred_base from the header */
    uint32_t nmodules, nstrings;
    uint64_t dir_off, sidx_off, sheap_off, sheap_size, mheap_off, mheap_size, rel_off, rel_size;
    PyObject **strings;           /* resolved strings, by index (NULL: not yet) */
    unsigned char *state;         /* per module: 0 not loaded, 1 loaded, 2 failed */
    int pinned;                   /* something in the mapping was handed to the interpreter
                                     (a string interned, a module loaded): never unmap it */
};

static PyObject *inbox;           /* a Python list: rm_load_module appends the code object */
static PyObject *singletons[C_END];

/* CRC-32 as zlib computes it ([CONV-5]), slice-by-8: checking a module's bytes is most of
   the work of loading it, so this is the hot loop. */
static uint32_t crc_tab[8][256];
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    if (!crc_tab[0][1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_tab[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
    }
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) { crc = crc_tab[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8); n--; }
    while (n >= 8) {            /* little-endian only, as the fingerprint guarantees here */
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = crc_tab[7][v & 0xFF] ^ crc_tab[6][(v >> 8) & 0xFF] ^ crc_tab[5][(v >> 16) & 0xFF]
            ^ crc_tab[4][(v >> 24) & 0xFF] ^ crc_tab[3][(v >> 32) & 0xFF]
            ^ crc_tab[2][(v >> 40) & 0xFF] ^ crc_tab[1][(v >> 48) & 0xFF] ^ crc_tab[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_tab[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

int rm_bind_inbox(const char *module, const char *attr) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *m = PyImport_ImportModule(module);
    PyObject *l = m ? PyObject_GetAttrString(m, attr) : NULL;
    Py_XDECREF(m);
    int ok = l && PyList_Check(l);
    if (ok) { Py_XSETREF(inbox, l); } else { Py_XDECREF(l); PyErr_Clear(); }
    PyGILState_Release(g);
    return ok ? 0 : -1;
}

/* ---- Opening: map the file privately, at its preferred base when that is free ---------- */
rm_image *rm_open(const char *path, char *err, int errlen) {
    rm_image *img = NULL;
    unsigned char hdr[HEADER_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) FAIL("cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) FAIL("cannot stat: %s", strerror(errno));
    if (st.st_size < HEADER_SIZE || pread(fd, hdr, HEADER_SIZE, 0) != HEADER_SIZE)
        FAIL("truncated: shorter than the header");
    if (rd64(hdr + 16) != (uint64_t)st.st_size)
        FAIL("truncated or extended: header says %llu bytes, file has %lld",
             (unsigned long long)rd64(hdr + 16), (long long)st.st_size);
    img = calloc(1, sizeof *img);
    if (!img) FAIL("out of memory");
    img->size = st.st_size;
    img->preferred = rd64(hdr + 24);
    void *want = (void *)(uintptr_t)img->preferred;
    void *p = mmap(want, img->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0);
    if (p == MAP_FAILED)   /* taken (or an old kernel): anywhere, and relocate PTR records */
        p = mmap(NULL, img->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) FAIL("cannot map: %s", strerror(errno));
    close(fd);
    fd = -1;
    img->base = p;
    /* Python has checked magic, version, CRC and fingerprint on these same bytes; C keeps
       only what it needs, and checks the sections it uses lie inside the file. */
    img->nmodules = rd32(hdr + 32);
    img->nstrings = rd32(hdr + 36);
    const unsigned char *s = hdr + 48;
    img->dir_off = rd64(s + 0);
    img->sidx_off = rd64(s + 32);
    img->sheap_off = rd64(s + 48);  img->sheap_size = rd64(s + 56);
    img->mheap_off = rd64(s + 64);  img->mheap_size = rd64(s + 72);
    img->rel_off = rd64(s + 80);    img->rel_size = rd64(s + 88);
    if (img->dir_off + (uint64_t)img->nmodules * MODULE_SIZE > img->size
        || img->sidx_off + (uint64_t)img->nstrings * STRING_SIZE > img->size
        || img->sheap_off + img->sheap_size > img->size || img->mheap_off + img->mheap_size > img->size
        || img->rel_off + img->rel_size > img->size)
        FAIL("section outside the file");
    img->strings = calloc(img->nstrings ? img->nstrings : 1, sizeof(PyObject *));
    img->state = calloc(img->nmodules ? img->nmodules : 1, 1);
    if (!img->strings || !img->state) FAIL("out of memory");
    return img;
fail:
    if (fd >= 0) close(fd);
    rm_close(img);
    return NULL;
}

/* The memory stays mapped: code objects loaded from it live there until the process ends. */
void rm_close(rm_image *img) {
    if (!img) return;
    if (img->pinned) return;      /* its objects live until the process ends ([LOAD-4]) */
    if (img->base) munmap(img->base, img->size);
    free(img->strings); free(img->state); free(img);
}

const unsigned char *rm_base(rm_image *img) { return img->base; }
unsigned long long rm_size(rm_image *img) { return img->size; }
int rm_relocated(rm_image *img) { return (uint64_t)(uintptr_t)img->base != img->preferred; }

/* ---- Singletons (spec 5.4) ------------------------------------------------------------- */
static int init_singletons(void) {
    if (singletons[0]) return 0;
    PyObject *s[C_END] = {0};
    s[0] = Py_None; s[1] = Py_True; s[2] = Py_False; s[3] = Py_Ellipsis;
    s[4] = PyTuple_New(0);
    s[5] = PyBytes_FromStringAndSize(NULL, 0);
    s[6] = PyUnicode_New(0, 0);
    for (int n = -5; n <= 256; n++) s[C_SMALL_INT + n + 5] = PyLong_FromLong(n);
    for (int c = 0; c < 256; c++) {
        char b = (char)c;
        s[C_LATIN1 + c] = PyUnicode_FromOrdinal(c);
        s[C_BYTE + c] = PyBytes_FromStringAndSize(&b, 1);
    }
    for (int i = 0; i < C_END; i++) {
        int defined = i < 7 || (i >= C_SMALL_INT && i <= C_SMALL_INT + 261) || i >= C_LATIN1;
        if (defined && !s[i]) { PyErr_Clear(); return -1; }
    }
    memcpy(singletons, s, sizeof s);   /* the table holds one reference to each, forever */
    return 0;
}

/* ---- Strings (spec 4, [LOAD-2]) ------------------------------------------------------- */
static PyObject *resolve_string(rm_image *img, uint64_t index, char *err, int errlen) {
    if (img->strings[index]) return img->strings[index];
    const unsigned char *e = img->base + img->sidx_off + index * STRING_SIZE;
    uint32_t off = rd32(e), size = rd32(e + 4), flags = rd32(e + 8), crc = rd32(e + 12);
    if ((uint64_t)off + size > img->sheap_size || off % 8 || size < 48 || flags > 1) {
        snprintf(err, errlen, "string %llu: bad index entry", (unsigned long long)index);
        return NULL;
    }
    unsigned char *obj = img->base + img->sheap_off + off;
    if (crc32_update(crc32_update(0, e, 12), obj, size) != crc || rd64(obj + 8) != T_STR) {
        snprintf(err, errlen, "string %llu: checksum mismatch", (unsigned long long)index);
        return NULL;
    }
    PyObject *s = (PyObject *)obj;
    img->pinned = 1;
    Py_SET_TYPE(s, &PyUnicode_Type);
    if (flags & 1) PyUnicode_InternInPlace(&s);   /* may return the interpreter's own string */
    img->strings[index] = s;
    return s;
}

/* ---- Code objects: what init_code() does beyond the stored fields ([LOAD-3]) ------------ */
static int init_code_object(PyCodeObject *co) {
#if RM_CODE_VERSION == 1
    PyInterpreterState *interp = PyInterpreterState_Get();
    co->co_version = interp->func_state.next_version;
    if (interp->func_state.next_version != 0) interp->func_state.next_version++;
#elif RM_CODE_VERSION == 2
    PyCodeObject *probe = PyCode_NewEmpty("", "", 0);
    if (!probe) return -1;
    co->co_version = probe->co_version;   /* a version no other code object has */
    Py_DECREF(probe);
#endif
#if RM_CODE_WATCHERS
    PyInterpreterState *wi = PyInterpreterState_Get();
    uint8_t bits = wi->active_code_watchers;
    for (int i = 0; bits; i++, bits >>= 1) {
        if ((bits & 1) && wi->code_watchers[i] && wi->code_watchers[i](PY_CODE_EVENT_CREATE, co) < 0)
            PyErr_WriteUnraisable((PyObject *)co);   /* as notify_code_watchers() does */
    }
#endif
    return 0;
}

/* ---- Loading one module ([LOAD-1]) ------------------------------------------------------ */
int rm_load_module(rm_image *img, unsigned int index, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    if (index >= img->nmodules) FAIL("no module %u", index);
    if (img->state[index] == 2) FAIL("module failed to load before");
    const unsigned char *e = img->base + img->dir_off + (uint64_t)index * MODULE_SIZE;
    uint64_t seg_off = rd64(e + 40);
    uint32_t seg_size = rd32(e + 48), root = rd32(e + 52);
    uint32_t r_index = rd32(e + 56), r_count = rd32(e + 60), r_nonptr = rd32(e + 64);
    unsigned char *seg = img->base + seg_off;
    const uint32_t *rel = (const uint32_t *)(img->base + img->rel_off) + r_index;
    PyObject *root_obj = (PyObject *)(seg + root);
    if (img->state[index] == 1) goto done;

    if (seg_off < img->mheap_off || seg_off + seg_size > img->mheap_off + img->mheap_size
        || seg_off % 8 || root >= seg_size || root % 8 || r_nonptr > r_count
        || ((uint64_t)r_index + r_count) * 4 > img->rel_size)
        FAIL("directory entry out of bounds");
    if (crc32_update(crc32_update(0, seg, seg_size), (const unsigned char *)rel, (size_t)r_count * 4)
        != rd32(e + 68))
        FAIL("segment checksum mismatch");
    if (!inbox || init_singletons() < 0) FAIL("accelerator not initialised");

    /* Pass 1: validate every record; nothing is written yet. */
    uint64_t lo = img->preferred + seg_off, hi = lo + seg_size;
    for (uint32_t i = 0; i < r_count; i++) {
        uint32_t slot = rel[i] >> 3, kind = rel[i] & 7;
        uint64_t v;
        if ((uint64_t)slot * 8 + 8 > seg_size) FAIL("relocation %u: slot outside the segment", i);
        memcpy(&v, seg + (uint64_t)slot * 8, 8);
        switch (kind) {
        case R_TYPE: if (v < T_BYTES || v > T_CODE) FAIL("relocation %u: bad type code", i); break;
        case R_CONST: if (v >= C_END || (v >= 7 && v < C_SMALL_INT) || (v > C_SMALL_INT + 261 && v < C_LATIN1))
                          FAIL("relocation %u: bad singleton id", i);
                      break;
        case R_STR: if (v >= img->nstrings) FAIL("relocation %u: bad string index", i); break;
        case R_FROZENSET: case R_PTR: if (v < lo || v >= hi) FAIL("relocation %u: pointer outside", i); break;
        default: FAIL("relocation %u: unknown kind", i);
        }
        if ((kind == R_PTR) != (i >= r_nonptr)) FAIL("relocation %u: out of order", i);
    }
    /* Strings first: they can fail (checksums), and nothing in the segment is written yet. */
    for (uint32_t i = 0; i < r_count; i++) {
        if ((rel[i] & 7) != R_STR) continue;
        if (!resolve_string(img, rd64(seg + (uint64_t)(rel[i] >> 3) * 8), err, errlen)) goto fail;
    }
    /* Pass 2: apply.  PTR records only when the file is not at its preferred base. */
    int64_t delta = (int64_t)((uintptr_t)img->base - img->preferred);
    uint32_t n = delta ? r_count : r_nonptr;
    for (uint32_t i = 0; i < n; i++) {
        PyObject **w = (PyObject **)(seg + (uint64_t)(rel[i] >> 3) * 8);
        uint64_t v = (uint64_t)(uintptr_t)*w;
        switch (rel[i] & 7) {
        case R_TYPE: {
            static PyTypeObject *types[8];
            if (!types[1]) {
                types[T_STR] = &PyUnicode_Type; types[T_BYTES] = &PyBytes_Type;
                types[T_TUPLE] = &PyTuple_Type; types[T_INT] = &PyLong_Type;
                types[T_FLOAT] = &PyFloat_Type; types[T_COMPLEX] = &PyComplex_Type;
                types[T_CODE] = &PyCode_Type;
            }
            *w = (PyObject *)types[v];
            break;
        }
        case R_CONST: *w = singletons[v]; break;
        case R_STR: *w = img->strings[v]; break;
        case R_FROZENSET: case R_PTR: *w = (PyObject *)(uintptr_t)(v + delta); break;
        }
    }
    /* Frozensets ([OBJ-9]): built from their (now fixed-up) tuples. */
    for (uint32_t i = 0; i < r_count; i++) {
        if ((rel[i] & 7) != R_FROZENSET) continue;
        PyObject **w = (PyObject **)(seg + (uint64_t)(rel[i] >> 3) * 8);
        PyObject *fs = PyFrozenSet_New(*w);
        if (!fs) { PyErr_Clear(); FAIL("cannot build a frozenset"); }
        *w = fs;                     /* owned by the image forever */
    }
    for (uint32_t i = 0; i < r_nonptr; i++) {
        if ((rel[i] & 7) != R_TYPE) continue;
        PyObject *o = (PyObject *)(seg + (uint64_t)(rel[i] >> 3) * 8 - 8);
        if (Py_TYPE(o) == &PyCode_Type && init_code_object((PyCodeObject *)o) < 0) {
            PyErr_Clear();
            FAIL("cannot initialise a code object");
        }
    }
    if (Py_TYPE(root_obj) != &PyCode_Type) FAIL("root is not a code object");
    img->state[index] = 1;
done:
    if (PyList_Append(inbox, root_obj) < 0) { PyErr_Clear(); FAIL("out of memory"); }
    rc = 0;
fail:
    if (rc < 0 && index < img->nmodules && img->state[index] != 1) img->state[index] = 2;
    PyGILState_Release(g);
    return rc;
}

/* The interpreter version this file was compiled for: Python refuses a mismatched build. */
unsigned long rm_python_version(void) { return PY_VERSION_HEX; }

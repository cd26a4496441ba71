/* refmarshal accelerator: the import hook's way in, without cffi.
 *
 * The accelerator is one shared object, built by cffi (build_accel.py) as the module
 * refmarshal._accel._loader.  This file adds a second, plain CPython module to the same file,
 * refmarshal._accel._hook (its init function is PyInit__hook; _accel/loader.py loads it with
 * an ExtensionFileLoader on the shared object's path), holding what a process's first import
 * through an image needs: open the image and check its header, make the image's capsule,
 * install the C methods, make a finder's hook.  So the import hook never imports
 * _cffi_backend nor the cffi wrapper: only the tests, the CLI, the writer and the benchmarks
 * do, through cffi (loader.py's `ffi` and `lib`, loaded on first use).
 *
 * These functions are called with the GIL held, in the main interpreter (loader.py refuses
 * another one on 3.12+) or in one of 3.11's, which share its GIL.  rm_install_method,
 * rm_image_capsule and rm_hook_new (rm_import.c) take the GIL with PyGILState_Ensure, as
 * cffi's calls need: they are called here as cffi calls them, with the GIL released
 * (PyGILState_Ensure knows the main interpreter's thread state only: from a 3.11
 * subinterpreter, with the GIL held, it would wait for the GIL forever).
 *
 * The header check ([HDR-1..9], [SEC-2]) is format.check_header's, on the names of the
 * generated rm_format.h: check_header() below says only whether the header passes, and what
 * failed; loader.py asks format.check_header for the full message when it does not (a test
 * compares the two on corrupted headers).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "rm_common.h"
#include "rm_loader.h"

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* The running interpreter's fingerprint (spec 2.2): format.fingerprint() in C. */
static void fingerprint(unsigned char fp[RM_FP_BYTES]) {
    memset(fp, 0, RM_FP_BYTES);
    uint32_t hexversion = (uint32_t)Py_Version;
    memcpy(fp + RM_FP_HEXVERSION_OFF, &hexversion, 4);               /* little-endian only */
    uint32_t magic = (uint32_t)PyImport_GetMagicNumber();            /* MAGIC_NUMBER's bytes */
    memcpy(fp + RM_FP_PYC_MAGIC_OFF, &magic, RM_FP_PYC_MAGIC_LEN);
    fp[RM_FP_PTR_SIZE_OFF] = (unsigned char)sizeof(void *);
    fp[RM_FP_BYTE_ORDER_OFF] = PY_LITTLE_ENDIAN ? 'L' : 'B';
    uint16_t flags = 0;
#ifdef Py_REF_DEBUG
    flags |= 1;               /* sys.gettotalrefcount */
#endif
#ifdef Py_TRACE_REFS
    flags |= 2;               /* sys.getobjects */
#endif
#ifdef Py_GIL_DISABLED
    flags |= 4;               /* "t" in sys.abiflags */
#endif
    memcpy(fp + RM_FP_BUILD_FLAGS_OFF, &flags, 2);
    const char *tag = PyImport_GetMagicTag(), *version = Py_GetVersion();
    size_t n = strlen(tag);
    memcpy(fp + RM_FP_CACHE_TAG_OFF, tag, n < RM_FP_CACHE_TAG_LEN ? n : RM_FP_CACHE_TAG_LEN);
    n = strlen(version);
    memcpy(fp + RM_FP_VERSION_OFF, version, n < RM_FP_VERSION_LEN ? n : RM_FP_VERSION_LEN);
}

/* NULL when the header passes format.check_header, else what failed first. */
static const char *header_problem(const unsigned char *hdr, uint64_t file_size) {
    if (memcmp(hdr + RM_HDR_MAGIC_OFF, RM_MAGIC, RM_MAGIC_LEN) != 0) return "bad magic";
    uint16_t major;
    memcpy(&major, hdr + RM_HDR_FORMAT_MAJOR_OFF, 2);
    if (major != FORMAT_MAJOR) return "format version";
    if (rd32(hdr + RM_HDR_HEADER_SIZE_OFF) != HEADER_SIZE) return "header size";
    if (rd64(hdr + RM_HDR_FILE_SIZE_OFF) != file_size) return "file size";
    unsigned char copy[HEADER_SIZE];
    memcpy(copy, hdr, HEADER_SIZE);
    memset(copy + RM_HDR_HEADER_CRC_OFF, 0, RM_HDR_HEADER_CRC_LEN);
    if (rm_crc32(0, copy, HEADER_SIZE) != rd32(hdr + RM_HDR_HEADER_CRC_OFF))
        return "header checksum mismatch";
    unsigned char fp[RM_FP_BYTES];
    fingerprint(fp);
    if (memcmp(hdr + RM_HDR_FINGERPRINT_OFF, fp, RM_FP_BYTES) != 0) return "fingerprint";
    if (rd32(hdr + RM_HDR_FLAGS_OFF) & ~(uint32_t)FLAG_OPTIMIZE_MASK) return "reserved flags";
    uint64_t base = rd64(hdr + RM_HDR_PREFERRED_BASE_OFF);
    if (base % 0x40000000u != 0 || base == 0 || base >= (uint64_t)1 << 47)
        return "preferred base";
    if (rd64(hdr + RM_HDR_SECTION_SIZE_OFF(SEC_DIRECTORY))
        != (uint64_t)rd32(hdr + RM_HDR_MODULE_COUNT_OFF) * MODULE_SIZE)
        return "directory size";
    if (rd64(hdr + RM_HDR_SECTION_SIZE_OFF(SEC_STRING_INDEX))
        != (uint64_t)rd32(hdr + RM_HDR_STRING_COUNT_OFF) * STRING_SIZE)
        return "string index size";
    if (rd64(hdr + RM_HDR_SECTION_SIZE_OFF(SEC_LOOKUP))
        != rm_lookup_size(rd32(hdr + RM_HDR_MODULE_COUNT_OFF)))
        return "lookup table size";
    return NULL;
}

static rm_image *image_arg(PyObject *addr) {
    void *p = PyLong_AsVoidPtr(addr);
    if (!p && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "closed image");
    return p;
}

/* ---- Module functions --------------------------------------------------------------------- */
PyDoc_STRVAR(open_doc,
"open(path, mode, /)\n--\n\n"
"Open the image at path (bytes) with rm_open; ValueError(rm_open's message) when it cannot.\n"
"Returns (handle, base, size, header, optimize, problem): handle an int for the other\n"
"functions, the header's bytes, the optimization level of its flags, problem None when the\n"
"header passes the check, else what failed (the caller closes the handle then).");

static PyObject *hook_open(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "open(path: bytes, mode: int)");
    const char *path = PyBytes_AS_STRING(args[0]);
    long mode = PyLong_AsLong(args[1]);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    char err[256] = "";
    rm_image *img;
    Py_BEGIN_ALLOW_THREADS        /* reads the header from the file */
    img = rm_open(path, (int)mode, err, (int)sizeof err);
    Py_END_ALLOW_THREADS
    if (!img) return PyErr_Format(PyExc_ValueError, "%s", err);
    const unsigned char *base = rm_base(img);
    unsigned long long size = rm_size(img);
    const char *problem = header_problem(base, size);   /* rm_open read the header there */
    PyObject *r = Py_BuildValue("NKKy#Is", PyLong_FromVoidPtr(img),
                                (unsigned long long)(uintptr_t)base, size, (const char *)base,
                                (Py_ssize_t)HEADER_SIZE,
                                rd32(base + RM_HDR_FLAGS_OFF) & FLAG_OPTIMIZE_MASK, problem);
    if (!r) rm_close(img);
    return r;
}

static PyObject *hook_close(PyObject *mod, PyObject *addr) {
    rm_image *img = image_arg(addr);
    if (!img) return NULL;
    rm_close(img);
    Py_RETURN_NONE;
}

static PyObject *hook_bytes_read(PyObject *mod, PyObject *addr) {
    rm_image *img = image_arg(addr);
    return img ? PyLong_FromUnsignedLongLong(rm_bytes_read(img)) : NULL;
}

static PyObject *hook_relocated(PyObject *mod, PyObject *addr) {
    rm_image *img = image_arg(addr);
    return img ? PyBool_FromLong(rm_relocated(img)) : NULL;
}

static PyObject *hook_module_count(PyObject *mod, PyObject *addr) {
    rm_image *img = image_arg(addr);
    return img ? PyLong_FromUnsignedLong(rm_module_count(img)) : NULL;
}

static PyObject *hook_check_header(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || PyBytes_GET_SIZE(args[0]) != HEADER_SIZE)
        return PyErr_Format(PyExc_TypeError, "check_header(header: bytes[%d], file_size)",
                            HEADER_SIZE);
    unsigned long long size = PyLong_AsUnsignedLongLong(args[1]);
    if (size == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    const char *problem = header_problem((const unsigned char *)PyBytes_AS_STRING(args[0]), size);
    if (!problem) Py_RETURN_NONE;
    return PyUnicode_FromString(problem);
}

static PyObject *hook_fingerprint(PyObject *mod, PyObject *unused) {
    unsigned char fp[RM_FP_BYTES];
    fingerprint(fp);
    return PyBytes_FromStringAndSize((const char *)fp, RM_FP_BYTES);
}

static PyObject *hook_image_capsule(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "image_capsule(handle, path, error_type)");
    rm_image *img = image_arg(args[0]);
    if (!img) return NULL;
    PyObject *io = PyList_New(2);
    if (!io) return NULL;
    PyList_SET_ITEM(io, 0, Py_NewRef(args[1]));
    PyList_SET_ITEM(io, 1, Py_NewRef(args[2]));
    PyObject *cap = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rm_image_capsule(img, io);
    Py_END_ALLOW_THREADS
    if (rc == 0) cap = Py_NewRef(PyList_GET_ITEM(io, 2));
    else PyErr_NoMemory();
    Py_DECREF(io);
    return cap;
}

static PyObject *hook_install_method(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyType_Check(args[0]) || !PyUnicode_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "install_method(cls, key: str)");
    const char *key = PyUnicode_AsUTF8(args[1]);
    if (!key) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = rm_install_method(args[0], key);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_Format(PyExc_ImportError, "refmarshal accelerator: cannot install %s", key);
    Py_RETURN_NONE;
}

/* ---- A finder's switches and counters: rm_hook's public fields ---------------------------- */
typedef struct {
    PyObject_HEAD
    rm_hook *hook;
    PyObject *capsule;        /* owns hook */
} HookState;

static void state_dealloc(HookState *self) {
    Py_XDECREF(self->capsule);
    PyObject_Free(self);
}

#define INT_FIELD(f) \
    static PyObject *get_##f(HookState *s, void *c) { return PyLong_FromLongLong(s->hook->f); }
INT_FIELD(checked)
INT_FIELD(disabled)
INT_FIELD(hits)
INT_FIELD(fallbacks)
INT_FIELD(direct)
INT_FIELD(stamped)
INT_FIELD(extensions)
INT_FIELD(absent)

static int set_checked(HookState *s, PyObject *v, void *c) {
    int t = v ? PyObject_IsTrue(v) : -1;
    if (t < 0) {
        if (!v) PyErr_SetString(PyExc_AttributeError, "cannot delete checked");
        return -1;
    }
    s->hook->checked = t;
    return 0;
}

static PyGetSetDef state_getset[] = {
    {"checked", (getter)get_checked, (setter)set_checked, "compare sources' mtime and size", NULL},
    {"disabled", (getter)get_disabled, NULL, "the image's directory proved bad", NULL},
    {"hits", (getter)get_hits, NULL, "modules loaded from the image", NULL},
    {"fallbacks", (getter)get_fallbacks, NULL, "modules of the image that went stock", NULL},
    {"direct", (getter)get_direct, NULL, "specs found without asking PathFinder", NULL},
    {"stamped", (getter)get_stamped, NULL, "direct specs proven by directory stamps", NULL},
    {"extensions", (getter)get_extensions, NULL, "extension modules found without PathFinder",
     NULL},
    {"absent", (getter)get_absent, NULL, "imports of names nobody provides answered without "
     "PathFinder", NULL},
    {NULL},
};

static PyTypeObject HookStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "refmarshal._accel._hook.HookState",
    .tp_basicsize = sizeof(HookState),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)state_dealloc,
    .tp_getset = state_getset,
    .tp_doc = "An import hook's switches and counters (rm_hook in rm_loader.h).",
};

static PyObject *hook_new_hook(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "new_hook(checked, io: list)");
    int checked = PyObject_IsTrue(args[0]);
    if (checked < 0) return NULL;
    rm_hook *h;
    Py_BEGIN_ALLOW_THREADS
    h = rm_hook_new(checked, args[1]);
    Py_END_ALLOW_THREADS
    if (!h) return PyErr_Format(PyExc_ValueError, "cannot set up the import hook");
    HookState *s = PyObject_New(HookState, &HookStateType);
    if (!s) return NULL;
    s->hook = h;
    s->capsule = Py_NewRef(PyList_GET_ITEM(args[1], PyList_GET_SIZE(args[1]) - 1));
    return Py_BuildValue("NO", (PyObject *)s, s->capsule);
}

static PyMethodDef hook_methods[] = {
    {"open", (PyCFunction)(void (*)(void))hook_open, METH_FASTCALL, open_doc},
    {"close", hook_close, METH_O, "close(handle, /)\n--\n\nrm_close."},
    {"bytes_read", hook_bytes_read, METH_O, "bytes_read(handle, /)\n--\n\nrm_bytes_read."},
    {"relocated", hook_relocated, METH_O, "relocated(handle, /)\n--\n\nrm_relocated."},
    {"module_count", hook_module_count, METH_O,
     "module_count(handle, /)\n--\n\nrm_module_count."},
    {"check_header", (PyCFunction)(void (*)(void))hook_check_header, METH_FASTCALL,
     "check_header(header, file_size, /)\n--\n\n"
     "None when the header passes format.check_header, else what failed first."},
    {"fingerprint", hook_fingerprint, METH_NOARGS,
     "fingerprint()\n--\n\nformat.fingerprint(), computed in C."},
    {"image_capsule", (PyCFunction)(void (*)(void))hook_image_capsule, METH_FASTCALL,
     "image_capsule(handle, path, error_type, /)\n--\n\n"
     "The capsule the C methods reach the image through (rm_image_capsule)."},
    {"install_method", (PyCFunction)(void (*)(void))hook_install_method, METH_FASTCALL,
     "install_method(cls, key, /)\n--\n\nrm_install_method; ImportError when it fails."},
    {"new_hook", (PyCFunction)(void (*)(void))hook_new_hook, METH_FASTCALL,
     "new_hook(checked, io, /)\n--\n\n"
     "rm_hook_new: (its HookState, its capsule), the capsule also appended to io."},
    {NULL},
};

static int hook_exec(PyObject *m) {
    if (Py_Version >> 16 != PY_VERSION_HEX >> 16) {
        PyErr_SetString(PyExc_ImportError,
                        "refmarshal accelerator was built for another Python version");
        return -1;
    }
    if (PyType_Ready(&HookStateType) < 0) return -1;
    if (PyModule_AddIntConstant(m, "MODE_HUGE_PAGES", RM_MODE_HUGE_PAGES) < 0
        || PyModule_AddIntConstant(m, "MODE_SMALL_PAGES", RM_MODE_SMALL_PAGES) < 0
        || PyModule_AddIntConstant(m, "MODE_FILE_MAPPING", RM_MODE_FILE_MAPPING) < 0
        || PyModule_AddIntConstant(m, "MODE_AUTO", RM_MODE_AUTO) < 0
        || PyModule_AddIntConstant(m, "HEADER_SIZE", HEADER_SIZE) < 0
        || PyModule_AddIntConstant(m, "FLAG_OPTIMIZE_MASK", FLAG_OPTIMIZE_MASK) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot hook_slots[] = {
    {Py_mod_exec, hook_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* the main interpreter only: see the comment at the top */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef hook_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "refmarshal._accel._hook",
    .m_doc = "The import hook's entry points into the accelerator (rm_hook.c), without cffi.",
    .m_size = 0,
    .m_methods = hook_methods,
    .m_slots = hook_slots,
};

PyMODINIT_FUNC PyInit__hook(void) {
    return PyModuleDef_Init(&hook_module);
}

/* refmarshal accelerator: the import hook's way in, without cffi.
 *
 * The accelerator is one shared object, built by cffi (build_accel.py) as the module
 * refmarshal._accel._loader.  This file adds a second, plain CPython module to the same file,
 * refmarshal._accel._hook (its init function is PyInit__hook; _startup.load_hook_module loads
 * it with an ExtensionFileLoader on the shared object's path), holding what a process's first
 * import through an image needs, so that it loads no Python module of refmarshal's but
 * _startup: the two types importer.ImageFinder and importer.ImageLoader, and open_finder,
 * which opens the image, checks its header and makes the finder.  So the import hook never
 * imports _cffi_backend nor the cffi wrapper: only the tests, the CLI, the writer and the
 * benchmarks do, through cffi (loader.py's `ffi` and `lib`, loaded on first use).
 *
 * These functions are called with the GIL held, in the main interpreter (the module refuses
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
#include <structmember.h>
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

/* rm_open, with the GIL released while it reads the header from the file; NULL with
   ValueError(its message) when it cannot open the image. */
static rm_image *open_image(const char *path, int mode) {
    char err[256] = "";
    rm_image *img;
    Py_BEGIN_ALLOW_THREADS
    img = rm_open(path, mode, err, (int)sizeof err);
    Py_END_ALLOW_THREADS
    if (!img) PyErr_Format(PyExc_ValueError, "%s", err);
    return img;
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
    long mode = PyLong_AsLong(args[1]);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    rm_image *img = open_image(PyBytes_AS_STRING(args[0]), (int)mode);
    if (!img) return NULL;
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

/* ---- The finder: importer.ImageFinder ---------------------------------------------------- *
 * A type of this module's, so that a process's first import through the image makes its finder
 * here, with no Python module of refmarshal's loaded but _startup (open_finder below).  Its
 * find_spec is rm_import.c's (installed with rm_install_method); what Python reads of it are
 * rm_hook's public fields.  Not instantiable from Python: open_finder makes them. */
PyObject *rm_image_capsule_owning(rm_image *img, PyObject *path);
rm_image *rm_image_capsule_adopt(PyObject *cap, PyObject *error_type);

typedef struct {
    PyObject_HEAD
    PyObject *path;           /* str: the image's path */
    PyObject *image_cap;      /* the image's capsule, which owns it */
    PyObject *hook_cap;       /* `_hook`: the capsule of rm_hook, which the C methods use */
    PyObject *failed;         /* `_failed`: names whose module failed to load (stock since) */
    PyObject *validated;      /* `_validated`: FileFinders, directory stamps checked so far */
    PyObject *image;          /* the AccelImage, made at the first use of `.image` */
    rm_hook *hook;            /* owned by hook_cap */
} Finder;

/* The module's state: its two types, made by hook_exec in each interpreter that imports it
   (3.11's subinterpreters each have their own importlib, whose SourceFileLoader ImageLoader
   subclasses). */
typedef struct {
    PyTypeObject *finder_type, *loader_type;
} hook_state;

static void finder_dealloc(Finder *f) {
    Py_XDECREF(f->path); Py_XDECREF(f->image); Py_XDECREF(f->hook_cap);
    Py_XDECREF(f->image_cap); Py_XDECREF(f->failed); Py_XDECREF(f->validated);
    PyTypeObject *t = Py_TYPE(f);
    t->tp_free((PyObject *)f);
    Py_DECREF(t);
}

static PyObject *finder_repr(Finder *f) {
    const char *state = f->hook->disabled ? "disabled" : f->hook->checked ? "checked" : "unchecked";
    return PyUnicode_FromFormat("<refmarshal.ImageFinder %R %s hits=%lld>", f->path, state,
                                f->hook->hits);
}

#define FINDER_FIELD(f) \
    static PyObject *get_##f(Finder *s, void *c) { return PyLong_FromLongLong(s->hook->f); }
FINDER_FIELD(hits)
FINDER_FIELD(fallbacks)
FINDER_FIELD(direct)
FINDER_FIELD(stamped)
FINDER_FIELD(extensions)
FINDER_FIELD(absent)

static PyObject *get_checked(Finder *s, void *c) { return PyBool_FromLong(s->hook->checked); }
static PyObject *get_disabled(Finder *s, void *c) { return PyBool_FromLong(s->hook->disabled); }

static int set_checked(Finder *s, PyObject *v, void *c) {
    int t = v ? PyObject_IsTrue(v) : -1;
    if (t < 0) {
        if (!v) PyErr_SetString(PyExc_AttributeError, "cannot delete checked");
        return -1;
    }
    s->hook->checked = t;
    return 0;
}

/* The AccelImage of refmarshal._accel.loader over this finder's image.  The module is loaded
   then, from its file, as the slow way of a first import loads it (_startup._load_hook_modules:
   no import statement, which -X importtime would list). */
static PyObject *get_image(Finder *s, void *c) {
    if (!s->image) {
        PyObject *name = PyUnicode_FromString("refmarshal._startup");
        PyObject *st = name ? PyImport_GetModule(name) : NULL;   /* (not its package) */
        Py_XDECREF(name);
        if (!st && !PyErr_Occurred()) st = PyImport_ImportModule("refmarshal._startup");
        PyObject *r = st ? PyObject_CallMethod(st, "_load_hook_modules", NULL) : NULL;
        Py_XDECREF(st);
        if (!r) return NULL;
        Py_DECREF(r);
        PyObject *m = PyImport_ImportModule("refmarshal._accel.loader");
        PyObject *cls = m ? PyObject_GetAttrString(m, "AccelImage") : NULL;
        s->image = cls ? PyObject_CallMethod(cls, "_adopt", "OO", s->path, s->image_cap) : NULL;
        Py_XDECREF(m); Py_XDECREF(cls);
    }
    return Py_XNewRef(s->image);
}

static PyObject *finder_invalidate_caches(Finder *s, PyObject *unused) {
    if (PySet_Clear(s->validated) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyGetSetDef finder_getset[] = {
    {"checked", (getter)get_checked, (setter)set_checked,
     "Compare each module's source mtime and size with the image's record.", NULL},
    {"disabled", (getter)get_disabled, NULL,
     "The image's directory proved bad: the finder finds nothing any more.", NULL},
    {"hits", (getter)get_hits, NULL, "Modules whose code came from the image.", NULL},
    {"fallbacks", (getter)get_fallbacks, NULL,
     "Modules the image holds that went through stock import (shadowed, stale, or a bad "
     "module).", NULL},
    {"direct", (getter)get_direct, NULL,
     "Specs found without asking PathFinder (rm_import.c: find_directly).", NULL},
    {"stamped", (getter)get_stamped, NULL,
     "Of the direct specs, those proven by the image's directory stamps alone, without a "
     "FileFinder (rm_import.c: by_stamps).", NULL},
    {"extensions", (getter)get_extensions, NULL,
     "Top-level extension modules found on sys.path without asking PathFinder, by the same "
     "proof as direct (rm_import.c: find_extension).", NULL},
    {"absent", (getter)get_absent, NULL,
     "Imports of top-level names nobody provides answered without PathFinder: the finders "
     "after it asked, then stock's ModuleNotFoundError raised (rm_import.c: answer_absent).",
     NULL},
    {"image", (getter)get_image, NULL,
     "The image, as a refmarshal._accel.loader.AccelImage (made at the first use).", NULL},
    {NULL},
};

static PyMemberDef finder_members[] = {
    {"path", T_OBJECT, offsetof(Finder, path), READONLY, "The image's path."},
    {"_hook", T_OBJECT, offsetof(Finder, hook_cap), READONLY, NULL},
    {"_failed", T_OBJECT, offsetof(Finder, failed), READONLY, NULL},
    {"_validated", T_OBJECT, offsetof(Finder, validated), READONLY, NULL},
    {NULL},
};

static PyMethodDef finder_methods[] = {
    {"invalidate_caches", (PyCFunction)finder_invalidate_caches, METH_NOARGS,
     "invalidate_caches($self, /)\n--\n\n"
     "importlib.invalidate_caches() calls it: every directory listing and directory stamp is\n"
     "checked again against its directory at its next use."},
    {NULL},
};

static PyType_Slot finder_slots[] = {
    {Py_tp_dealloc, finder_dealloc},
    {Py_tp_repr, finder_repr},
    {Py_tp_getset, finder_getset},
    {Py_tp_members, finder_members},
    {Py_tp_methods, finder_methods},
    {Py_tp_doc, "ImageFinder()\n--\n\n"
     "Finds as PathFinder does; loads from the image what it holds unchanged.\n\n"
     "find_spec(fullname, path=None, target=None) (rm_import.c) makes the spec stock import\n"
     "would find, or asks PathFinder for it, and only when that spec is the very file the\n"
     "image recorded (same path, a plain source module, and nothing but stock's finders\n"
     "between this one and PathFinder on sys.meta_path) gives it an ImageLoader, which checks\n"
     "the source in checked mode.  Being C, it adds no Python frame to an import: tracers,\n"
     "debuggers and warnings see what they see with stock import.  Made by\n"
     "refmarshal.importer.install (and the start-up hook), not by calling the type."},
    {0, NULL},
};

static PyType_Spec finder_spec = {
    .name = "refmarshal.importer.ImageFinder",
    .basicsize = sizeof(Finder),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = finder_slots,
};

/* ---- The loader: importer.ImageLoader ---------------------------------------------------- */
static PyObject *loader_reduce(PyObject *self, PyObject *unused) {
    /* a copy or a pickle (of a spec, say) is the stock loader: the image stays here */
    PyObject *bs = PyImport_ImportModule("_frozen_importlib_external");
    PyObject *sfl = bs ? PyObject_GetAttrString(bs, "SourceFileLoader") : NULL;
    PyObject *name = sfl ? PyObject_GetAttrString(self, "name") : NULL;
    PyObject *path = name ? PyObject_GetAttrString(self, "path") : NULL;
    PyObject *r = path ? Py_BuildValue("O(OO)", sfl, name, path) : NULL;
    Py_XDECREF(bs); Py_XDECREF(sfl); Py_XDECREF(name); Py_XDECREF(path);
    return r;
}

static PyMethodDef loader_reduce_def = {"__reduce__", loader_reduce, METH_NOARGS, NULL};

/* class ImageLoader(SourceFileLoader) with __slots__ ("_hook", "_spec"), made as a class
   statement makes it; hook_exec installs rm_import.c's get_code. */
static PyTypeObject *make_loader_type(void) {
    PyObject *bs = PyImport_ImportModule("_frozen_importlib_external");
    PyObject *sfl = bs ? PyObject_GetAttrString(bs, "SourceFileLoader") : NULL;
    PyObject *ns = sfl ? Py_BuildValue(
        "{sssss(ss)ss}", "__module__", "refmarshal.importer", "__qualname__", "ImageLoader",
        "__slots__", "_hook", "_spec", "__doc__",
        "A SourceFileLoader whose code comes from the image; everything else is stock.\n\n"
        "get_code is a C method (rm_import.c) and exec_module the stock one, which calls it and\n"
        "runs the code: no frame of refmarshal's is on the stack while the module's body runs.\n"
        "When get_code hands the code over, the module's __loader__ and __spec__.loader become a\n"
        "plain SourceFileLoader, as stock import leaves them (code that looks loaders up by\n"
        "type, such as distlib's resource finders, depends on that); so does the loader of the\n"
        "spec find_spec made (_spec), which runpy (python -m) runs as __main__.  _hook is the\n"
        "finder's C state; slots, so the instance's __dict__ is stock's.  A copy or a pickle is\n"
        "a SourceFileLoader.") : NULL;
    PyObject *cls = ns ? PyObject_CallFunction((PyObject *)&PyType_Type, "s(O)O", "ImageLoader",
                                               sfl, ns) : NULL;
    PyObject *reduce = cls ? PyDescr_NewMethod((PyTypeObject *)cls, &loader_reduce_def) : NULL;
    if (!reduce || PyObject_SetAttrString(cls, "__reduce__", reduce) < 0)
        Py_CLEAR(cls);
    Py_XDECREF(bs); Py_XDECREF(sfl); Py_XDECREF(ns); Py_XDECREF(reduce);
    return (PyTypeObject *)cls;
}

static PyObject *attr_of(const char *module, const char *name) {
    PyObject *m = PyImport_ImportModule(module);
    PyObject *a = m ? PyObject_GetAttrString(m, name) : NULL;
    Py_XDECREF(m);
    return a;
}

/* ---- Opening a finder ---------------------------------------------------------------------- */
/* 1 when this interpreter's code objects keep column positions (not -X no_debug_ranges, nor
   PYTHONNODEBUGRANGES, nor an embedding's config; importer._debug_ranges asks it too).
   code.replace() makes a code object as compiling and unmarshalling do; any instruction with
   a column says yes.  0 no, -1 error. */
static int debug_ranges(void) {
    PyObject *func = attr_of("_frozen_importlib", "_find_spec");     /* any code object */
    PyObject *some_code = func ? PyObject_GetAttrString(func, "__code__") : NULL;
    PyObject *code = some_code ? PyObject_CallMethod(some_code, "replace", NULL) : NULL;
    Py_XDECREF(func); Py_XDECREF(some_code);
    if (!code) return -1;
    int yes = 0;
    PyObject *bytes = PyCode_Check(code) ? PyCode_GetCode((PyCodeObject *)code) : NULL;
    Py_ssize_t n = bytes ? PyBytes_GET_SIZE(bytes) : 0;
    Py_XDECREF(bytes);
    for (int off = 0; !yes && off < n; off += 2) {
        int sl, sc, el, ec;
        if (PyCode_Addr2Location((PyCodeObject *)code, off, &sl, &sc, &el, &ec) && sc >= 0)
            yes = 1;
    }
    Py_DECREF(code);
    return yes;
}
/* What a finder uses of importlib's (rm_import.c: the io list of rm_hook_new, in its order
   after the image, the failed set and before the validated set...): module, name. */
static const char *const stock_objects[][2] = {
    {"_frozen_importlib_external", "PathFinder"},
    {"_frozen_importlib_external", "SourceFileLoader"},
    {NULL, "ImageLoader"}, {NULL, "on_error"},
    {"_frozen_importlib_external", "FileFinder"},
    {"_frozen_importlib_external", "spec_from_file_location"},
    {NULL, "validated"},
    {"_frozen_importlib", "BuiltinImporter"}, {"_frozen_importlib", "FrozenImporter"},
    {"_imp", "is_builtin"}, {"_imp", "find_frozen"},
    {"_frozen_importlib_external", "ExtensionFileLoader"},
};

/* 1 when the image's level is sys.flags.optimize, 0 not, -1 error. */
static int same_optimize(const unsigned char *hdr) {
    PyObject *flags = PySys_GetObject("flags");                  /* borrowed */
    PyObject *level = flags ? PyObject_GetAttrString(flags, "optimize") : NULL;
    long want = level ? PyLong_AsLong(level) : -1;
    Py_XDECREF(level);
    if (want == -1 && PyErr_Occurred()) return -1;
    return want == (long)(rd32(hdr + RM_HDR_FLAGS_OFF) & FLAG_OPTIMIZE_MASK);
}

PyDoc_STRVAR(open_finder_doc,
"open_finder(path, checked, on_error, /)\n--\n\n"
"An ImageFinder over the image at path (str, absolute), made here alone: what a process's\n"
"first import through the image runs (_startup), where loading refmarshal's Python modules\n"
"would cost more than the rest of the first import.  on_error(message) is what the finder\n"
"calls when something goes wrong during an import.  ValueError when the image cannot be used\n"
"(cannot be opened, fails the header check, other optimization level, an interpreter without\n"
"column positions): importer.install then says why, the slow way.");

static PyObject *hook_open_finder(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyUnicode_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "open_finder(path: str, checked, on_error)");
    int checked = PyObject_IsTrue(args[1]);
    PyObject *fs = checked < 0 ? NULL : PyUnicode_EncodeFSDefault(args[0]);
    rm_image *img = fs ? open_image(PyBytes_AS_STRING(fs), RM_MODE_AUTO) : NULL;
    Py_XDECREF(fs);
    if (!img) return NULL;
    const unsigned char *hdr = rm_base(img);          /* rm_open read the header there */
    int usable = header_problem(hdr, rm_size(img)) ? 0 : same_optimize(hdr);
    if (usable > 0) usable = debug_ranges();
    if (usable <= 0) {
        rm_close(img);
        if (usable == 0) PyErr_SetString(PyExc_ValueError, "this image cannot be used here");
        return NULL;
    }
    PyObject *cap = rm_image_capsule_owning(img, args[0]);
    if (!cap) { rm_close(img); return NULL; }
    hook_state *st = PyModule_GetState(mod);
    Finder *f = (Finder *)st->finder_type->tp_alloc(st->finder_type, 0);
    PyObject *io = f ? PyList_New(0) : NULL;
    if (!io) { Py_DECREF(cap); Py_XDECREF(f); return NULL; }
    f->path = Py_NewRef(args[0]);
    f->image_cap = cap;
    f->failed = PySet_New(NULL);
    f->validated = PySet_New(NULL);
    int ok = f->failed && f->validated && PyList_Append(io, cap) == 0
             && PyList_Append(io, f->failed) == 0;
    for (size_t i = 0; ok && i < sizeof stock_objects / sizeof *stock_objects; i++) {
        const char *m = stock_objects[i][0], *name = stock_objects[i][1];
        PyObject *o = m ? attr_of(m, name)
                        : Py_NewRef(!strcmp(name, "ImageLoader") ? (PyObject *)st->loader_type
                                    : !strcmp(name, "on_error") ? args[2] : f->validated);
        ok = o && PyList_Append(io, o) == 0;
        Py_XDECREF(o);
    }
    rm_hook *h = NULL;
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        h = rm_hook_new(checked, io);
        Py_END_ALLOW_THREADS
        if (!h) PyErr_SetString(PyExc_ValueError, "cannot set up the import hook");
    }
    if (h) {
        f->hook = h;
        f->hook_cap = Py_NewRef(PyList_GET_ITEM(io, PyList_GET_SIZE(io) - 1));
    }
    Py_DECREF(io);
    if (!h) Py_CLEAR(f);
    return (PyObject *)f;
}

static PyObject *hook_debug_ranges(PyObject *mod, PyObject *unused) {
    int yes = debug_ranges();
    return yes < 0 ? NULL : PyBool_FromLong(yes);
}

static PyObject *hook_image_info(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "image_info(capsule, error_type)");
    rm_image *img = rm_image_capsule_adopt(args[0], args[1]);
    if (!img) return NULL;
    const unsigned char *base = rm_base(img);
    return Py_BuildValue("NKKy#I", PyLong_FromVoidPtr(img), (unsigned long long)(uintptr_t)base,
                         rm_size(img), (const char *)base, (Py_ssize_t)HEADER_SIZE,
                         rd32(base + RM_HDR_FLAGS_OFF) & FLAG_OPTIMIZE_MASK);
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
    {"open_finder", (PyCFunction)(void (*)(void))hook_open_finder, METH_FASTCALL,
     open_finder_doc},
    {"debug_ranges", hook_debug_ranges, METH_NOARGS,
     "debug_ranges()\n--\n\n"
     "True when this interpreter's code objects keep column positions (not under\n"
     "-X no_debug_ranges, PYTHONNODEBUGRANGES or an embedding's config)."},
    {"image_info", (PyCFunction)(void (*)(void))hook_image_info, METH_FASTCALL,
     "image_info(capsule, error_type, /)\n--\n\n"
     "(handle, base, size, header, optimize) of the image an image capsule holds, whose API\n"
     "errors get error_type from now on: for an AccelImage adopting a finder's image."},
    {NULL},
};

static int hook_exec(PyObject *m) {
    if (Py_Version >> 16 != PY_VERSION_HEX >> 16) {
        PyErr_SetString(PyExc_ImportError,
                        "refmarshal accelerator was built for another Python version");
        return -1;
    }
    hook_state *st = PyModule_GetState(m);
    st->finder_type = (PyTypeObject *)PyType_FromSpec(&finder_spec);
    st->loader_type = st->finder_type ? make_loader_type() : NULL;
    if (!st->loader_type) return -1;
    int rc;
    Py_BEGIN_ALLOW_THREADS        /* as cffi calls it: see the top of this file */
    rc = rm_install_method(st->finder_type, "ImageFinder.find_spec") < 0
         || rm_install_method(st->loader_type, "ImageLoader.get_code") < 0 ? -1 : 0;
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_SetString(PyExc_ImportError, "refmarshal accelerator: cannot install methods");
        return -1;
    }
    if (PyModule_AddObjectRef(m, "ImageFinder", (PyObject *)st->finder_type) < 0
        || PyModule_AddObjectRef(m, "ImageLoader", (PyObject *)st->loader_type) < 0)
        return -1;
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
    .m_size = sizeof(hook_state),   /* strong references, kept for the process's life */
    .m_methods = hook_methods,
    .m_slots = hook_slots,
};

PyMODINIT_FUNC PyInit__hook(void) {
    return PyModuleDef_Init(&hook_module);
}

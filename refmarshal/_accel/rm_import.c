/* refmarshal accelerator: what the import system calls, as C methods.
 *
 * Stock import runs no Python frame of its own but frozen importlib's, which warnings skip,
 * tracebacks hide and tracers know.  So that an import through the image shows exactly those
 * frames, the methods the import system calls are C methods, installed on the Python classes
 * (rm_install_method):
 *
 *   importer.ImageFinder.find_spec(fullname, path=None, target=None)
 *   importer.ImageLoader.get_code(fullname)    frozen exec_module calls it, then runs the code
 *   loader.AccelImage.get_code(name)           the same load, for the API (tests, CLI, profiler)
 *
 * Between them and the image are two capsules: an image's (its rm_image, path and error type)
 * and a finder's (rm_hook: its switches and counters, which Python reads through cffi, and the
 * Python objects it calls).  A finder's capsule holds the AccelImage, which holds the image's.
 *
 * These run with the GIL held, in the interpreter that calls them.  The cffi functions below
 * (rm_install_method, rm_image_capsule, rm_hook_new) are called with the GIL released, as cffi
 * calls everything, and take it back with PyGILState_Ensure: that is right only in the main
 * interpreter (and in 3.11's shared-everything subinterpreters), so on 3.12+ the start-up hook
 * never opens an image in a subinterpreter (_startup.run).
 */
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "rm_common.h"
#include "rm_loader.h"

#define ERRLEN 256

/* rm_loader.c's mechanics (GIL held) */
int rm__find(rm_image *img, const char *name, size_t len, char *err, int errlen);
int rm__check_entry(rm_image *img, uint32_t i, rm_entry_info *out, char *err, int errlen);
PyObject *rm__load(rm_image *img, uint32_t index, char *err, int errlen);

#define IMAGE_CAPSULE "refmarshal.image"
#define HOOK_CAPSULE "refmarshal.hook"

typedef struct {
    rm_image *img;            /* closed by the AccelImage, which outlives every user of this */
    PyObject *path;           /* str: the image's path, for messages */
    PyObject *error_type;     /* ImageError */
} image_ref;

typedef struct {              /* rm_hook.priv */
    image_ref *image;
    PyObject *owner;          /* the AccelImage: keeps `image` valid */
    PyObject *failed;         /* set: names whose module failed to load (stock from then on) */
    PyObject *path_finder;    /* importlib's PathFinder */
    PyObject *source_loader;  /* importlib's SourceFileLoader */
    PyObject *loader_type;    /* importer.ImageLoader */
    PyObject *on_error;       /* importer._warn_in_import(message) */
} hook_priv;

/* ---- Small helpers ----------------------------------------------------------------------- */
static void *capsule_of(PyObject *self, const char *attr, const char *kind) {
    PyObject *cap = PyObject_GetAttrString(self, attr);
    if (!cap) return NULL;
    void *p = PyCapsule_GetPointer(cap, kind);
    Py_DECREF(cap);           /* self keeps it */
    return p;
}

/* Arguments by position or keyword, as a Python signature `names[0], ...` with the first
   `required` mandatory; out[] starts with the defaults. */
static int parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, const char *const *names, int n, int required,
                      PyObject **out) {
    if (nargs > n)
        return PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)",
                            fname, n, nargs), -1;
    for (Py_ssize_t i = 0; i < nargs; i++) out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int j = 0;
        while (j < n && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) j++;
        if (j == n || j < nargs)
            return PyErr_Format(PyExc_TypeError, "%s() got an unexpected or repeated keyword "
                                "argument '%U'", fname, key), -1;
        out[j] = args[nargs + k];
    }
    for (int i = 0; i < required; i++)
        if (!out[i])
            return PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                                fname, names[i]), -1;
    return 0;
}

/* The module's index, -1 when the image does not hold it, -2 on a bad directory (err). */
static int find_name(image_ref *ir, PyObject *name, char *err) {
    Py_ssize_t len;
    const char *utf8 = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &len) : NULL;
    if (!utf8) { PyErr_Clear(); return -1; }   /* not a str, or lone surrogates: not ours */
    return rm__find(ir->img, utf8, (size_t)len, err, ERRLEN);
}

/* Tell Python (importer._warn_in_import) that something went wrong; never fails.  Called
   with no exception set. */
static void say(hook_priv *p, PyObject *message) {
    PyObject *r = message ? PyObject_CallOneArg(p->on_error, message) : NULL;
    if (!r) PyErr_WriteUnraisable(p->on_error);
    Py_XDECREF(r);
    Py_XDECREF(message);
}

/* ---- AccelImage.get_code(name) ------------------------------------------------------------ */
static PyObject *image_get_code(PyObject *self, PyObject *name) {
    image_ref *ir = capsule_of(self, "_capsule", IMAGE_CAPSULE);
    if (!ir) return NULL;
    char err[ERRLEN];
    int index = find_name(ir, name, err);
    if (index == -1) { PyErr_SetObject(PyExc_KeyError, name); return NULL; }
    PyObject *code = index < 0 ? NULL : rm__load(ir->img, (uint32_t)index, err, ERRLEN);
    if (!code) {
        if (index < 0) PyErr_Format(ir->error_type, "%U: %s", ir->path, err);
        else PyErr_Format(ir->error_type, "%U: module %U: %s", ir->path, name, err);
        return NULL;
    }
    return Py_NewRef(code);
}

/* ---- ImageFinder.find_spec(fullname, path=None, target=None) ------------------------------ */
/* PathFinder is the very next finder: stock order holds only while nothing was inserted
   between us. */
static int next_is_path_finder(PyObject *self, hook_priv *p) {
    PyObject *mp = PySys_GetObject("meta_path");          /* borrowed */
    if (!mp || !PyList_Check(mp)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(mp);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_GET_ITEM(mp, i) == self)
            return i + 1 < n && PyList_GET_ITEM(mp, i + 1) == p->path_finder;
    return 0;
}

/* 1 when the file at `path` has the size and mtime the image recorded. */
static int source_unchanged(const char *path, const rm_entry_info *info) {
    struct stat st;
    if (stat(path, &st) < 0) return 0;
    long long mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    return mtime_ns == info->mtime_ns && (unsigned long long)st.st_size == info->size;
}

/* The spec PathFinder found, its loader swapped for an ImageLoader when the image holds that
   very file (same path, a plain source module, and in checked mode unchanged on disk). */
static PyObject *serve_from_image(rm_hook *h, PyObject *hook_cap, PyObject *fullname,
                                  PyObject *spec, const rm_entry_info *info) {
    hook_priv *p = h->priv;
    PyObject *origin = PyObject_GetAttrString(spec, "origin");
    PyObject *loader = origin ? PyObject_GetAttrString(spec, "loader") : NULL;
    PyObject *fs = NULL, *ours = NULL, *result = NULL;
    if (!loader) goto done;
    int same = 0;
    if (PyUnicode_Check(origin) && Py_TYPE(loader) == (PyTypeObject *)p->source_loader) {
        fs = PyUnicode_EncodeFSDefault(origin);
        if (!fs) goto done;
        same = (size_t)PyBytes_GET_SIZE(fs) == info->path_len
               && memcmp(PyBytes_AS_STRING(fs), info->path, info->path_len) == 0
               && (!h->checked || source_unchanged(PyBytes_AS_STRING(fs), info));
    }
    if (!same) {
        h->fallbacks++;
        result = Py_NewRef(spec);
        goto done;
    }
    ours = PyObject_CallFunctionObjArgs(p->loader_type, fullname, origin, NULL);
    if (!ours || PyObject_SetAttrString(ours, "_hook", hook_cap) < 0
        || PyObject_SetAttrString(ours, "_spec", spec) < 0
        || PyObject_SetAttrString(spec, "loader", ours) < 0)
        goto done;
    result = Py_NewRef(spec);
done:
    Py_XDECREF(origin); Py_XDECREF(loader); Py_XDECREF(fs); Py_XDECREF(ours);
    return result;
}

static PyObject *finder_find_spec(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    static const char *const names[] = {"fullname", "path", "target"};
    PyObject *a[3] = {NULL, Py_None, Py_None};
    if (parse_args("find_spec", args, nargs, kwnames, names, 3, 1, a) < 0) return NULL;
    PyObject *fullname = a[0];
    PyObject *cap = PyObject_GetAttrString(self, "_hook");
    if (!cap) return NULL;
    PyObject *result = NULL, *spec = NULL;
    rm_hook *h = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
    if (!h) goto done;
    hook_priv *p = h->priv;
    if (h->disabled) { result = Py_NewRef(Py_None); goto done; }
    int failed = PySet_Contains(p->failed, fullname);
    if (failed < 0) goto done;
    if (failed) { h->fallbacks++; result = Py_NewRef(Py_None); goto done; }
    char err[ERRLEN];
    rm_entry_info info;
    int index = find_name(p->image, fullname, err);
    if (index >= 0 && rm__check_entry(p->image->img, (uint32_t)index, &info, err, ERRLEN) < 0)
        index = -2;
    if (index == -1 || (index >= 0 && !next_is_path_finder(self, p))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (index < 0) {          /* a bad directory: the image can no longer be trusted */
        h->disabled = 1;      /* (not removed from sys.meta_path while it is being walked) */
        say(p, PyUnicode_FromFormat("%U: %s; image disabled", p->image->path, err));
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *find = PyObject_GetAttrString(p->path_finder, "find_spec");
    if (!find) goto done;
    spec = PyObject_CallFunctionObjArgs(find, fullname, a[1], a[2], NULL);
    Py_DECREF(find);
    if (!spec) goto done;
    result = spec == Py_None ? Py_NewRef(spec) : serve_from_image(h, cap, fullname, spec, &info);
done:
    Py_XDECREF(spec);
    Py_DECREF(cap);
    return result;
}

/* ---- ImageLoader.get_code(fullname) ------------------------------------------------------- */
/* owner.attr becomes `*stock` (made at the first need) where it is `self`. */
static void unhook(hook_priv *p, PyObject *self, PyObject *fullname, PyObject *owner,
                   const char *attr, PyObject **stock) {
    PyObject *ld = owner ? PyObject_GetAttrString(owner, attr) : NULL;
    if (ld == self && !*stock) {
        PyObject *path = PyObject_GetAttrString(self, "path");
        *stock = path ? PyObject_CallFunctionObjArgs(p->source_loader, fullname, path, NULL)
                      : NULL;
        Py_XDECREF(path);
    }
    if (ld == self && *stock) PyObject_SetAttrString(owner, attr, *stock);
    Py_XDECREF(ld);
    PyErr_Clear();            /* at worst it keeps the ImageLoader */
}

/* The module whose code the stock exec_module is asking for: that method's `module`, when it
   is the Python frame that called get_code (a C method pushes no frame of its own), whether
   or not the module is in sys.modules (module_from_spec then exec_module by hand).  NULL,
   with no exception set, when something else called get_code (a profiler's wrapper...). */
static PyObject *module_in_exec(hook_priv *p) {
    PyFrameObject *frame = PyEval_GetFrame();             /* borrowed */
    PyObject *exec = frame ? PyObject_GetAttrString(p->source_loader, "exec_module") : NULL;
    PyObject *want = exec ? PyObject_GetAttrString(exec, "__code__") : NULL;
    PyCodeObject *code = want ? PyFrame_GetCode(frame) : NULL;
    PyObject *module = NULL;
    if (code && (PyObject *)code == want) {
#if PY_VERSION_HEX >= 0x030C0000
        module = PyFrame_GetVarString(frame, "module");
#else
        PyObject *locals = PyFrame_GetLocals(frame);
        module = locals ? PyMapping_GetItemString(locals, "module") : NULL;
        Py_XDECREF(locals);
#endif
    }
    Py_XDECREF(exec); Py_XDECREF(want); Py_XDECREF(code);
    PyErr_Clear();
    return module;
}

/* Once the module's code is handed over, its __loader__ and __spec__.loader become a plain
   SourceFileLoader, as stock import leaves them (code that looks loaders up by type, such as
   distlib's resource finders, depends on that): the body already runs with them.  The spec
   find_spec made (self._spec) too: runpy (python -m) asks for the code, then runs it as
   __main__ with that spec's loader.  The module is exec_module's, else sys.modules'. */
static void use_stock_loader(hook_priv *p, PyObject *self, PyObject *fullname) {
    PyObject *module = module_in_exec(p), *modules = PyImport_GetModuleDict();  /* borrowed */
    if (!module && modules) module = PyObject_GetItem(modules, fullname);
    PyErr_Clear();
    PyObject *spec = module ? PyObject_GetAttrString(module, "__spec__") : NULL;
    PyErr_Clear();
    PyObject *found = PyObject_GetAttrString(self, "_spec");
    PyErr_Clear();
    PyObject *stock = NULL;
    unhook(p, self, fullname, spec, "loader", &stock);
    unhook(p, self, fullname, found, "loader", &stock);
    unhook(p, self, fullname, module, "__loader__", &stock);
    if (found && PyObject_SetAttrString(self, "_spec", Py_None) < 0)   /* no cycle left */
        PyErr_Clear();
    Py_XDECREF(module); Py_XDECREF(spec); Py_XDECREF(found); Py_XDECREF(stock);
}

static PyObject *loader_get_code(PyObject *self, PyObject *fullname) {
    PyObject *code = NULL;
    PyObject *cap = PyObject_GetAttrString(self, "_hook");
    rm_hook *h = cap ? PyCapsule_GetPointer(cap, HOOK_CAPSULE) : NULL;
    PyErr_Clear();            /* no hook (a hand-made ImageLoader): stock */
    PyObject *name = h ? PyObject_GetAttrString(self, "name") : NULL;
    int mine = name ? PyObject_RichCompareBool(fullname, name, Py_EQ) : 0;
    Py_XDECREF(name);
    if (mine < 0) goto fail;
    if (mine) {
        hook_priv *p = h->priv;
        char err[ERRLEN];
        int index = find_name(p->image, fullname, err);
        code = index < 0 ? NULL : rm__load(p->image->img, (uint32_t)index, err, ERRLEN);
        if (code) {
            h->hits++;
            Py_INCREF(code);
            use_stock_loader(p, self, fullname);
            Py_DECREF(cap);
            return code;
        }
        if (index == -1) snprintf(err, ERRLEN, "not in the image");
        if (PySet_Add(p->failed, fullname) < 0) goto fail;
        h->fallbacks++;
        say(p, PyUnicode_FromFormat("%U: module %U: %s", p->image->path, fullname, err));
    }
    /* stock: SourceFileLoader's own get_code (looked up now: a profiler may wrap it) */
    PyObject *stock = PyObject_GetAttrString(h ? ((hook_priv *)h->priv)->source_loader
                                               : (PyObject *)Py_TYPE(self)->tp_base,
                                             "get_code");
    if (stock) {
        code = PyObject_CallFunctionObjArgs(stock, self, fullname, NULL);
        Py_DECREF(stock);
    }
fail:
    Py_XDECREF(cap);
    return code;
}

/* ---- Installing the methods --------------------------------------------------------------- */
static PyMethodDef methods[] = {
    {"get_code", (PyCFunction)(void (*)(void))image_get_code, METH_O,
     "get_code($self, name, /)\n--\n\n"
     "The module's code object, living in the image's memory (KeyError when absent)."},
    {"find_spec", (PyCFunction)(void (*)(void))finder_find_spec, METH_FASTCALL | METH_KEYWORDS,
     "find_spec($self, fullname, path=None, target=None)\n--\n\n"
     "PathFinder's spec; its loader an ImageLoader when the image holds that very file\n"
     "unchanged."},
    {"get_code", (PyCFunction)(void (*)(void))loader_get_code, METH_O,
     "get_code($self, fullname, /)\n--\n\n"
     "The image's code for this module; SourceFileLoader's when the image cannot serve it."},
};
static const char *const method_keys[] = {"AccelImage.get_code", "ImageFinder.find_spec",
                                          "ImageLoader.get_code"};

int rm_install_method(void *cls, const char *key) {
    int rc = -1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *type = (PyObject *)cls;
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        if (strcmp(key, method_keys[i]) != 0 || !PyType_Check(type)) continue;
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)type, &methods[i]);
        rc = d ? PyObject_SetAttrString(type, methods[i].ml_name, d) : -1;
        Py_XDECREF(d);
    }
    if (rc < 0) PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}

/* ---- Capsules ----------------------------------------------------------------------------- */
static void image_ref_free(PyObject *cap) {
    image_ref *ir = PyCapsule_GetPointer(cap, IMAGE_CAPSULE);
    if (!ir) { PyErr_Clear(); return; }
    Py_XDECREF(ir->path);
    Py_XDECREF(ir->error_type);
    free(ir);
}

/* io: a list [path, ImageError]; the capsule is appended to it. */
int rm_image_capsule(rm_image *img, void *io) {
    int rc = -1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *list = (PyObject *)io;
    image_ref *ir = calloc(1, sizeof *ir);
    if (ir && PyList_Check(list) && PyList_GET_SIZE(list) == 2) {
        ir->img = img;
        ir->path = Py_NewRef(PyList_GET_ITEM(list, 0));
        ir->error_type = Py_NewRef(PyList_GET_ITEM(list, 1));
        PyObject *cap = PyCapsule_New(ir, IMAGE_CAPSULE, image_ref_free);
        if (cap) {
            ir = NULL;        /* the capsule owns it */
            rc = PyList_Append(list, cap);
            Py_DECREF(cap);
        }
    }
    if (ir) { Py_XDECREF(ir->path); Py_XDECREF(ir->error_type); free(ir); }
    if (rc < 0) PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}

static void hook_free(PyObject *cap) {
    rm_hook *h = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
    if (!h) { PyErr_Clear(); return; }
    hook_priv *p = h->priv;
    Py_XDECREF(p->owner); Py_XDECREF(p->failed); Py_XDECREF(p->path_finder);
    Py_XDECREF(p->source_loader); Py_XDECREF(p->loader_type); Py_XDECREF(p->on_error);
    free(p);
    free(h);
}

/* io: a list [AccelImage, failed set, PathFinder, SourceFileLoader, ImageLoader, on_error];
   the hook's capsule (which owns the returned rm_hook) is appended to it. */
rm_hook *rm_hook_new(int checked, void *io) {
    rm_hook *result = NULL;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *list = (PyObject *)io, *cap = NULL;
    rm_hook *h = calloc(1, sizeof *h);
    hook_priv *p = calloc(1, sizeof *p);
    if (!h || !p || !PyList_Check(list) || PyList_GET_SIZE(list) != 6) goto fail;
    PyObject **it = &PyList_GET_ITEM(list, 0);
    p->image = capsule_of(it[0], "_capsule", IMAGE_CAPSULE);
    if (!p->image || !PySet_Check(it[1])) goto fail;
    p->owner = Py_NewRef(it[0]);
    p->failed = Py_NewRef(it[1]);
    p->path_finder = Py_NewRef(it[2]);
    p->source_loader = Py_NewRef(it[3]);
    p->loader_type = Py_NewRef(it[4]);
    p->on_error = Py_NewRef(it[5]);
    h->checked = checked;
    h->priv = p;
    cap = PyCapsule_New(h, HOOK_CAPSULE, hook_free);
    if (!cap) goto fail;
    h = NULL; p = NULL;       /* the capsule owns them */
    if (PyList_Append(list, cap) < 0) goto fail;
    result = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
fail:
    if (p) {
        Py_XDECREF(p->owner); Py_XDECREF(p->failed); Py_XDECREF(p->path_finder);
        Py_XDECREF(p->source_loader); Py_XDECREF(p->loader_type); Py_XDECREF(p->on_error);
    }
    free(p); free(h);
    Py_XDECREF(cap);          /* the list keeps it */
    if (!result) PyErr_Clear();
    PyGILState_Release(g);
    return result;
}

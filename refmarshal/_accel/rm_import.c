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
#include <errno.h>
#include <unistd.h>

#include "rm_common.h"
#include "rm_loader.h"

#define ERRLEN 256

static int stepped_aside(void);
typedef struct hook_priv hook_priv;
static int default_finder(hook_priv *p, PyObject *finder, PyObject *dir);
static int stamp_holds(hook_priv *p, PyObject *dir, long long stamp);

/* rm_loader.c's mechanics (GIL held) */
int rm__find(rm_image *img, const char *name, size_t len, char *err, int errlen);
int rm__check_entry(rm_image *img, uint32_t i, rm_entry_info *out, char *err, int errlen);
PyObject *rm__load(rm_image *img, uint32_t index, char *err, int errlen);

#define IMAGE_CAPSULE "refmarshal.image"
#define HOOK_CAPSULE "refmarshal.hook"

typedef struct {
    rm_image *img;            /* closed by the AccelImage, which outlives every user of this,
                                 or by this capsule when `owns` (rm_image_capsule_owning) */
    PyObject *path;           /* str: the image's path, for messages */
    PyObject *error_type;     /* ImageError; NULL until an AccelImage adopts an owning capsule */
    int owns;
} image_ref;

/* The Python objects a hook uses, in the order of rm_hook_new's io list. */
enum { IO_IMAGE, IO_FAILED, IO_PATH_FINDER, IO_SOURCE_LOADER, IO_LOADER_TYPE, IO_ON_ERROR,
       IO_FILE_FINDER, IO_SPEC_FROM_FILE, IO_VALIDATED, IO_BUILTIN, IO_FROZEN,
       IO_IS_BUILTIN, IO_FIND_FROZEN, IO_EXT_LOADER, IO_COUNT };

/* How stock import fills an object it makes (learnt once from stock itself, see learn):
   the type, then each attribute of its __dict__ in stock's order, set from what the caller
   gives (the module's name, loader, file, package path) or to a constant. */
enum { V_NAME, V_LOADER, V_ORIGIN, V_SMSL, V_CONST, V_NEW_LIST, V_COUNT };
#define MAX_ATTRS 16
typedef struct {
    PyTypeObject *type;       /* strong */
    int n;
    PyObject *key[MAX_ATTRS]; /* strong */
    int kind[MAX_ATTRS];
    PyObject *value[MAX_ATTRS];   /* V_CONST: None, True or False (immortal enough: strong) */
} made_like;

/* Frozen importlib's functions whose frames an import statement's find runs in. */
enum { CODE_FIND_SPEC, CODE_UNLOCKED, CODE_FIND_AND_LOAD, CODE_GCD_IMPORT, CODE_COUNT };
static const char *const code_names[CODE_COUNT] = {"_find_spec", "_find_and_load_unlocked",
                                                   "_find_and_load", "_gcd_import"};

struct hook_priv {            /* rm_hook.priv */
    image_ref *image;
    PyObject *obj[IO_COUNT];  /* strong references:
        IO_IMAGE          the AccelImage, or the image's capsule: keeps `image` valid
        IO_FAILED         set: names whose module failed to load (stock from then on)
        IO_PATH_FINDER    importlib's PathFinder
        IO_SOURCE_LOADER  importlib's SourceFileLoader
        IO_LOADER_TYPE    importer.ImageLoader
        IO_ON_ERROR       importer._warn_in_import(message)
        IO_FILE_FINDER    importlib's FileFinder
        IO_SPEC_FROM_FILE importlib's spec_from_file_location
        IO_VALIDATED      set: FileFinders whose listing was checked against their directory in
                          this process (emptied by ImageFinder.invalidate_caches)
        IO_BUILTIN        importlib's BuiltinImporter
        IO_FROZEN         importlib's FrozenImporter
        IO_IS_BUILTIN     _imp.is_builtin
        IO_FIND_FROZEN    _imp.find_frozen
        IO_EXT_LOADER     importlib's ExtensionFileLoader */
    PyObject *hooks[2];       /* sys.path_hooks' items default_hooks last judged (strong) */
    int hooks_default;        /* its verdict on them */
    PyObject *suffixes[2];    /* importlib's SOURCE_SUFFIXES, BYTECODE_SUFFIXES (strong) */
    PyObject *suffixes_seen[2];   /* their items then, as tuples */
    int learnt;               /* the templates below: 0 not yet learnt, 1 usable, -1 not */
    made_like spec_tmpl[2];   /* a module's spec, a package's */
    made_like loader_tmpl;    /* an ImageLoader */
    PyObject *code[CODE_COUNT];   /* frozen importlib's functions' code (strong), see
                                     called_by_import; code[0] NULL: not looked up yet */
    int codes_known;          /* 1 found, -1 not (then names are never answered absent) */
};

/* Attribute names the hot path uses, interned once (rm_hook_new). */
static PyObject *s_hook, *s_spec, *s_path, *s_path_cache, *s_loaders, *s_find_spec, *s_init_py;

static int intern_names(void) {
    if (s_init_py) return 0;
    struct { PyObject **slot; const char *text; } names[] = {
        {&s_hook, "_hook"}, {&s_spec, "_spec"}, {&s_path, "path"},
        {&s_path_cache, "_path_cache"}, {&s_loaders, "_loaders"}, {&s_find_spec, "find_spec"},
        {&s_init_py, "__init__.py"}};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!*names[i].slot && !(*names[i].slot = PyUnicode_InternFromString(names[i].text)))
            return -1;
    return 0;
}

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
    PyObject *r = message ? PyObject_CallOneArg(p->obj[IO_ON_ERROR], message) : NULL;
    if (!r) PyErr_WriteUnraisable(p->obj[IO_ON_ERROR]);
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
        PyObject *type = ir->error_type ? ir->error_type : PyExc_ValueError;
        if (index < 0) PyErr_Format(type, "%U: %s", ir->path, err);
        else PyErr_Format(type, "%U: module %U: %s", ir->path, name, err);
        return NULL;
    }
    return Py_NewRef(code);
}

/* ---- ImageFinder.find_spec(fullname, path=None, target=None) ------------------------------ */
/* Stock order holds between this finder and PathFinder: nothing stands between them but,
   where install() put the finder before them, stock's BuiltinImporter and FrozenImporter in
   that order (*ahead set then: a name they would find is theirs, see builtin_or_frozen).
   Before them, an import the image serves skips their two Python methods and two turns of
   the import system's loop over sys.meta_path. */
static int stock_order(PyObject *self, hook_priv *p, int *ahead) {
    PyObject *mp = PySys_GetObject("meta_path");          /* borrowed */
    if (!mp || !PyList_Check(mp)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(mp);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_GET_ITEM(mp, i) == self) {
            *ahead = i + 2 < n && PyList_GET_ITEM(mp, i + 1) == p->obj[IO_BUILTIN]
                     && PyList_GET_ITEM(mp, i + 2) == p->obj[IO_FROZEN];
            Py_ssize_t next = i + 1 + 2 * *ahead;
            return next < n && PyList_GET_ITEM(mp, next) == p->obj[IO_PATH_FINDER];
        }
    return 0;
}

/* 1 when BuiltinImporter or FrozenImporter would answer for fullname, or might (their
   question raised an ordinary exception: they will raise it themselves), 0 not, -1 error. */
static int builtin_or_frozen(hook_priv *p, PyObject *fullname) {
    PyObject *r = PyObject_CallOneArg(p->obj[IO_IS_BUILTIN], fullname);
    int yes = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    if (yes == 0) {
        r = PyObject_CallOneArg(p->obj[IO_FIND_FROZEN], fullname);
        yes = r ? r != Py_None : -1;
        Py_XDECREF(r);
    }
    return yes >= 0 ? yes : stepped_aside() ? 1 : -1;
}

/* 1 when `fullname` is asked for as a top-level module: no dot, path None. */
static int is_top_level(PyObject *fullname, PyObject *path) {
    return path == Py_None
           && PyUnicode_FindChar(fullname, '.', 0, PyUnicode_GET_LENGTH(fullname), 1) == -1;
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
    if (PyUnicode_Check(origin) && Py_TYPE(loader) == (PyTypeObject *)p->obj[IO_SOURCE_LOADER]) {
        fs = PyUnicode_EncodeFSDefault(origin);
        if (!fs) goto done;
        same = (size_t)PyBytes_GET_SIZE(fs) == info->path_len
               && memcmp(PyBytes_AS_STRING(fs), info->path, info->path_len) == 0;
    }
    if (!same) {
        h->fallbacks++;
        result = Py_NewRef(spec);
        goto done;
    }
    ours = PyObject_CallFunctionObjArgs(p->obj[IO_LOADER_TYPE], fullname, origin, NULL);
    if (!ours || PyObject_SetAttrString(ours, "_hook", hook_cap) < 0
        || PyObject_SetAttrString(ours, "_spec", spec) < 0
        || PyObject_SetAttrString(spec, "loader", ours) < 0)
        goto done;
    result = Py_NewRef(spec);
done:
    Py_XDECREF(origin); Py_XDECREF(loader); Py_XDECREF(fs); Py_XDECREF(ours);
    return result;
}

/* ---- Making specs and loaders as stock does, without running Python ---------------------- *
 * Stock FileFinder makes a module's spec with spec_from_file_location(name, file,
 * loader=SourceFileLoader(name, file), submodule_search_locations=None or [its directory]):
 * Python frames that set attributes.  learn() watches stock do it once per finder, for a
 * module and a package, with probe objects, and records the type and each attribute of the
 * result's __dict__ in order: one of the probes (name, loader, file, package path), None,
 * True, False or a new empty list.  make_like() then makes the same object with the type's
 * tp_new (object's: no __new__, no __init__ run) and the same attributes in the same order.
 * When anything about the result does not fit (another __new__ or __setattr__, another kind
 * of value, a result that make_like does not reproduce), stock's function is called as
 * before. */
static PyObject *empty_tuple;

static void made_like_clear(made_like *m) {
    Py_CLEAR(m->type);
    for (int i = 0; i < m->n; i++) { Py_CLEAR(m->key[i]); Py_CLEAR(m->value[i]); }
    m->n = 0;
}

/* 1 learnt, 0 obj has a shape make_like cannot copy, -1 error. */
static int learn_one(made_like *m, PyObject *obj, PyObject *const given[V_CONST]) {
    PyTypeObject *t = Py_TYPE(obj);
    if (t->tp_new != PyBaseObject_Type.tp_new || t->tp_setattro != PyObject_GenericSetAttr)
        return 0;
    PyObject *d = PyObject_GenericGetDict(obj, NULL), *k, *v;
    if (!d) return -1;
    int ok = PyDict_CheckExact(d) && PyDict_GET_SIZE(d) <= MAX_ATTRS;
    Py_ssize_t pos = 0;
    m->type = (PyTypeObject *)Py_NewRef(t);
    m->n = 0;
    while (ok && PyDict_Next(d, &pos, &k, &v)) {
        int kind = -1;
        for (int g = 0; g < V_CONST && kind < 0; g++)
            if (given[g] && v == given[g]) kind = g;
        if (kind < 0 && (v == Py_None || v == Py_True || v == Py_False)) kind = V_CONST;
        if (kind < 0 && PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0) kind = V_NEW_LIST;
        if (kind < 0 || !PyUnicode_CheckExact(k)) { ok = 0; break; }
        m->key[m->n] = Py_NewRef(k);
        m->value[m->n] = kind == V_CONST ? Py_NewRef(v) : NULL;
        m->kind[m->n++] = kind;
    }
    Py_DECREF(d);
    if (!ok) made_like_clear(m);
    return ok;
}

static PyObject *make_like(const made_like *m, PyObject *const given[V_CONST]) {
    PyObject *obj = m->type->tp_new(m->type, empty_tuple, NULL);
    for (int i = 0; obj && i < m->n; i++) {
        int kind = m->kind[i];
        PyObject *v = kind == V_CONST ? Py_NewRef(m->value[i])
                      : kind == V_NEW_LIST ? PyList_New(0) : Py_XNewRef(given[kind]);
        if (!v || PyObject_SetAttr(obj, m->key[i], v) < 0) Py_CLEAR(obj);
        Py_XDECREF(v);
    }
    return obj;
}

/* 1 when make_like gives what stock gave: the same attributes, in the same order, equal. */
static int made_alike(const made_like *m, PyObject *stock, PyObject *const given[V_CONST]) {
    PyObject *ours = make_like(m, given);
    PyObject *d1 = ours ? PyObject_GenericGetDict(ours, NULL) : NULL;
    PyObject *d2 = d1 ? PyObject_GenericGetDict(stock, NULL) : NULL;
    PyObject *k1 = d2 ? PyDict_Keys(d1) : NULL, *k2 = k1 ? PyDict_Keys(d2) : NULL;
    int same = k2 && Py_TYPE(ours) == Py_TYPE(stock)
               && PyObject_RichCompareBool(k1, k2, Py_EQ) == 1
               && PyObject_RichCompareBool(d1, d2, Py_EQ) == 1;
    Py_XDECREF(ours); Py_XDECREF(d1); Py_XDECREF(d2); Py_XDECREF(k1); Py_XDECREF(k2);
    return same;
}

/* 1 when the templates are usable; learnt once per finder, with no exception left set. */
static int learn(hook_priv *p) {
    if (p->learnt) return p->learnt;
    p->learnt = -1;
    if (!empty_tuple && !(empty_tuple = PyTuple_New(0))) { PyErr_Clear(); return -1; }
    PyObject *name = PyUnicode_FromString("refmarshal_probe.m");
    PyObject *dir = PyUnicode_FromString("/refmarshal-probe/m");
    PyObject *origin = PyUnicode_FromString("/refmarshal-probe/m/__init__.py");
    PyObject *loader = name && dir && origin
        ? PyObject_CallFunctionObjArgs(p->obj[IO_LOADER_TYPE], name, origin, NULL) : NULL;
    PyObject *given[V_CONST] = {name, NULL, origin, NULL};
    int ok = loader && learn_one(&p->loader_tmpl, loader, given) == 1
             && made_alike(&p->loader_tmpl, loader, given);
    given[V_LOADER] = loader;
    for (int pkg = 0; ok && pkg < 2; pkg++) {
        PyObject *smsl = pkg ? Py_BuildValue("[O]", dir) : Py_NewRef(Py_None);
        PyObject *args = smsl ? PyTuple_Pack(2, name, origin) : NULL;
        PyObject *kw = args ? Py_BuildValue("{sOsO}", "loader", loader,
                                            "submodule_search_locations", smsl) : NULL;
        PyObject *spec = kw ? PyObject_Call(p->obj[IO_SPEC_FROM_FILE], args, kw) : NULL;
        given[V_SMSL] = pkg ? smsl : NULL;
        ok = spec && learn_one(&p->spec_tmpl[pkg], spec, given) == 1
             && made_alike(&p->spec_tmpl[pkg], spec, given);
        Py_XDECREF(smsl); Py_XDECREF(args); Py_XDECREF(kw); Py_XDECREF(spec);
    }
    Py_XDECREF(name); Py_XDECREF(dir); Py_XDECREF(origin); Py_XDECREF(loader);
    PyErr_Clear();
    if (ok) p->learnt = 1;
    return p->learnt;
}

/* ---- Finding without PathFinder --------------------------------------------------------- *
 * For a module the image holds, the spec stock import would produce, made without walking the
 * path through PathFinder when the walk's outcome can be proven: every path entry before the
 * module's directory has a FileFinder (as stock import would create it, through PathFinder's
 * own _path_importer_cache) whose directory listing holds no candidate for the name, and the
 * module's own directory lists the recorded file as the first candidate FileFinder would take.
 * Listings are FileFinder's own (_path_cache): each is checked against its directory's mtime
 * once per process, as FileFinder.find_spec does on every call, and again after
 * importlib.invalidate_caches().  Anything else (a zip entry, another path hook's finder, a
 * name that exists in an earlier directory, a package beside a module...) is left to
 * PathFinder: find_directly answers 0. */

/* _path_join(a, b) as frozen importlib computes it on POSIX. */
static PyObject *path_join(PyObject *a, PyObject *b) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    while (n > 0 && PyUnicode_READ_CHAR(a, n - 1) == '/') n--;
    if (n == 0) return Py_NewRef(b);
    PyObject *head = PyUnicode_Substring(a, 0, n);
    PyObject *r = head ? PyUnicode_FromFormat("%U/%U", head, b) : NULL;
    Py_XDECREF(head);
    return r;
}

/* The directory's st_mtime as os.stat gives it (posixmodule's fill_time: seconds plus
   nanoseconds times 1e-9, a double), -1 when it cannot be stat'ed: what FileFinder.find_spec
   compares with _path_mtime at every call.  A new reference; NULL with an exception (a path
   with a NUL in it: os.stat's ValueError). */
static PyObject *dir_mtime(PyObject *dir) {
    PyObject *fs = PyUnicode_EncodeFSDefault(dir);
    if (!fs) return NULL;
    struct stat st;
    int ok = 0;
    if (strlen(PyBytes_AS_STRING(fs)) != (size_t)PyBytes_GET_SIZE(fs))
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
    else
        ok = stat(PyBytes_AS_STRING(fs), &st) == 0 ? 1 : -1;
    Py_DECREF(fs);
    return !ok ? NULL : ok > 0 ? PyFloat_FromDouble(st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9)
                               : PyLong_FromLong(-1);
}

/* FileFinder.find_spec's first step: its listing refilled when its directory's mtime differs
   from the one it was filled at.  1 refilled, 0 unchanged, -1 error. */
static int refill_if_changed(PyObject *finder, PyObject *dir) {
    PyObject *mtime = dir_mtime(dir), *filled = NULL;
    int same = mtime && (filled = PyObject_GetAttrString(finder, "_path_mtime"))
               ? PyObject_RichCompareBool(mtime, filled, Py_EQ) : -1;
    if (same == 0) {
        PyObject *r = PyObject_CallMethod(finder, "_fill_cache", NULL);
        if (!r || PyObject_SetAttrString(finder, "_path_mtime", mtime) < 0) same = -1;
        Py_XDECREF(r);
    }
    Py_XDECREF(mtime); Py_XDECREF(filled);
    return same < 0 ? -1 : !same;
}

/* refill_if_changed, done once per finder per process (and again after invalidate_caches). */
static int validate_listing(hook_priv *p, PyObject *finder, PyObject *dir) {
    int known = PySet_Contains(p->obj[IO_VALIDATED], finder);
    if (known) return known;
    if (refill_if_changed(finder, dir) < 0 || PySet_Add(p->obj[IO_VALIDATED], finder) < 0)
        return -1;
    return 0;
}

/* The finder stock import uses for a path entry (a new reference): sys.path_importer_cache's,
   else what PathFinder._path_importer_cache makes (and caches) for it. */
static PyObject *entry_finder(hook_priv *p, PyObject *entry) {
    PyObject *cache = PySys_GetObject("path_importer_cache"), *key = Py_NewRef(entry);
    if (PyUnicode_GET_LENGTH(entry) == 0) {
        /* '': the current directory, as os.getcwd() names it; none when it is gone (stock
           does not cache that).  Other failures: PathFinder's own code decides. */
        char buf[4096];
        Py_CLEAR(key);
        if (getcwd(buf, sizeof buf)) key = PyUnicode_DecodeFSDefault(buf);
        else if (errno == ENOENT) return Py_NewRef(Py_None);
        if (!key) PyErr_Clear();
    }
    if (key && cache && PyDict_CheckExact(cache)) {
        PyObject *f = PyDict_GetItemWithError(cache, key);
        Py_DECREF(key);
        if (f) return Py_NewRef(f);
        if (PyErr_Occurred()) return NULL;
    } else {
        Py_XDECREF(key);
    }
    return PyObject_CallMethod(p->obj[IO_PATH_FINDER], "_path_importer_cache", "O", entry);
}

typedef struct {              /* what the image recorded for the module */
    PyObject *tail;           /* the last part of its name */
    PyObject *path;           /* its file (str) */
    PyObject *dir;            /* the path entry or package directory it was found in */
    int package;
    long long pkg_stamp;      /* a package's directory stamp with MOD_FIRST_IN_DIR, else 0 */
} recorded;

/* A FileFinder's directory, its listing (checked against the directory, validate_listing)
   and its (suffix, loader) list, as new references: 1; 0 when they do not have the types
   FileFinder gives them (nothing set); -1 error. */
static int finder_listing(hook_priv *p, PyObject *finder, PyObject **dir, PyObject **cache,
                          PyObject **loaders) {
    *dir = PyObject_GetAttr(finder, s_path);
    *cache = *loaders = NULL;
    int rc = *dir ? 0 : -1;
    if (rc == 0 && PyUnicode_Check(*dir)) {
        rc = validate_listing(p, finder, *dir) < 0 ? -1 : 0;    /* may refill _path_cache */
        *cache = rc == 0 ? PyObject_GetAttr(finder, s_path_cache) : NULL;
        *loaders = *cache ? PyObject_GetAttr(finder, s_loaders) : NULL;
        rc = !*loaders ? -1 : PyAnySet_Check(*cache) && PyList_Check(*loaders);
    }
    if (rc <= 0) { Py_CLEAR(*dir); Py_CLEAR(*cache); Py_CLEAR(*loaders); }
    return rc;
}

/* 1 when `path` (str) names a regular file, as FileFinder's _path_isfile tests it; 0 not;
   -1 error. */
static int is_regular_file(PyObject *path) {
    PyObject *fs = PyUnicode_EncodeFSDefault(path);
    if (!fs) return -1;
    struct stat st;
    int yes = stat(PyBytes_AS_STRING(fs), &st) == 0 && S_ISREG(st.st_mode);
    Py_DECREF(fs);
    return yes;
}

/* -1 error, 0 the directory has a candidate (or is the module's own and does not prove the
   recorded file first), 1 nothing there for this name, 2 it is the recorded file.  `what`:
   the module's recorded (walk_entries calls it). */
static int look_in(hook_priv *p, PyObject *finder, const void *what, PyObject **full) {
    const recorded *rec = what;
    int rc, own;
    PyObject *dir, *cache, *loaders, *base = NULL;
    rc = finder_listing(p, finder, &dir, &cache, &loaders);
    if (rc <= 0) return rc;
    rc = -1;
    own = PyUnicode_Compare(dir, rec->dir) == 0;
    int has_dir = PySet_Contains(cache, rec->tail);
    if (has_dir < 0) goto done;
    if (rec->package && own) {
        /* FileFinder: tail/__init__ + each suffix in loader order, the first file wins */
        rc = 0;
        if (!has_dir || !(base = path_join(dir, rec->tail))) goto done;
        /* the package directory's stamp, with stock's loaders, proves the recorded __init__.py
           first ([DIR-6]): one stat of the directory per process, shared with its submodules
           (by_stamps), instead of one per __init__ candidate before it */
        int stamped = rec->pkg_stamp ? default_finder(p, finder, dir) : 0;
        if (stamped > 0) stamped = stamp_holds(p, base, rec->pkg_stamp);
        if (stamped) {
            PyObject *cand = stamped > 0 ? path_join(base, s_init_py) : NULL;
            rc = !cand ? -1 : PyUnicode_Compare(cand, rec->path) == 0 ? 2 : 0;
            if (rc == 2) *full = cand;
            else Py_XDECREF(cand);
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(loaders); i++) {
            PyObject *pair = PyList_GET_ITEM(loaders, i);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) goto done;
            PyObject *init = PyUnicode_FromFormat("__init__%U", PyTuple_GET_ITEM(pair, 0));
            PyObject *cand = init ? path_join(base, init) : NULL;
            Py_XDECREF(init);
            if (!cand) { rc = -1; goto done; }
            if (PyUnicode_Compare(cand, rec->path) == 0) {
                if (PyTuple_GET_ITEM(pair, 1) == p->obj[IO_SOURCE_LOADER]) {
                    *full = cand;
                    rc = 2;
                } else {
                    Py_DECREF(cand);
                }
                goto done;
            }
            int exists = is_regular_file(cand);
            Py_DECREF(cand);
            if (exists) { rc = exists < 0 ? -1 : 0; goto done; } /* another __init__ first */
        }
        goto done;
    }
    if (has_dir) { rc = 0; goto done; }          /* a package or namespace portion: PathFinder */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(loaders); i++) {
        PyObject *pair = PyList_GET_ITEM(loaders, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) { rc = 0; goto done; }
        PyObject *name = PyUnicode_Concat(rec->tail, PyTuple_GET_ITEM(pair, 0));
        int there = name ? PySet_Contains(cache, name) : -1;
        if (there <= 0) { Py_XDECREF(name); if (there < 0) goto done; continue; }
        rc = 0;                                  /* the first candidate FileFinder would try */
        if (own && !rec->package && PyTuple_GET_ITEM(pair, 1) == p->obj[IO_SOURCE_LOADER]) {
            PyObject *cand = path_join(dir, name);
            if (!cand) rc = -1;
            else if (PyUnicode_Compare(cand, rec->path) == 0) { *full = cand; rc = 2; }
            else Py_DECREF(cand);
        }
        Py_DECREF(name);
        goto done;
    }
    rc = own ? 0 : 1;
done:
    Py_XDECREF(dir); Py_XDECREF(cache); Py_XDECREF(loaders); Py_XDECREF(base);
    return rc;
}

/* What the image recorded for module `info` named fullname, or 0 when its path does not have
   the shape FileFinder gives (then PathFinder decides). */
static int recorded_for(PyObject *fullname, const rm_entry_info *info, recorded *rec) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(fullname);
    Py_ssize_t dot = PyUnicode_FindChar(fullname, '.', 0, n, -1);
    if (dot == -2) return -1;
    rec->package = (info->flags & MOD_PACKAGE) != 0;
    rec->pkg_stamp = rec->package && (info->flags & MOD_FIRST_IN_DIR) ? info->pkg_mtime_ns : 0;
    rec->tail = PyUnicode_Substring(fullname, dot + 1, n);
    rec->path = PyUnicode_DecodeFSDefaultAndSize(info->path, info->path_len);
    if (!rec->tail || !rec->path) return -1;
    PyObject *suffix = PyUnicode_FromFormat(rec->package ? "/%U/__init__.py" : "/%U.py",
                                            rec->tail);
    if (!suffix) return -1;
    Py_ssize_t plen = PyUnicode_GET_LENGTH(rec->path), slen = PyUnicode_GET_LENGTH(suffix);
    int ok = PyUnicode_Tailmatch(rec->path, suffix, 0, plen, 1) == 1 && plen > slen;
    Py_DECREF(suffix);
    if (!ok) return 0;
    rec->dir = PyUnicode_Substring(rec->path, 0, plen - slen);
    return rec->dir ? 1 : -1;
}

/* ---- Finding by directory stamps ([DIR-6]) ---------------------------------------------- *
 * For a submodule whose search path (its parent's __path__) is exactly the directory the
 * image recorded it in, MOD_FIRST_IN_DIR says that at build time stock's FileFinder would have
 * taken the recorded file there and found no other candidate for the name, and directory
 * stamps equal to the directories' mtimes now say that no name was added, removed or renamed
 * there since: stock would take the same file, and the spec is made without a FileFinder.
 * Each directory is stat'ed once per process (again after importlib.invalidate_caches()).
 * Stock would have made that FileFinder with sys.path_hooks and kept it in
 * sys.path_importer_cache: so this holds only while the cache has no entry for the directory
 * (then the listing way above decides) and the hooks are the default ones, [zipimporter,
 * FileFinder's hook with importlib's loaders] (judged once per hooks, default_hooks).
 * Code that wants the FileFinder (pkgutil.get_importer, iter_modules) makes it on demand. */

/* The (suffix, loader) pairs of stock's FileFinders: importlib's _get_supported_file_loaders
   as they are now (a new reference), or NULL with an exception. */
static PyObject *default_loaders(hook_priv *p) {
    PyObject *ext = NULL, *imp = PyImport_ImportModule("_imp");
    PyObject *bs = PyImport_ImportModule("_frozen_importlib_external");
    PyObject *out = imp && bs ? PyList_New(0) : NULL;
    if (out) ext = PyObject_CallMethod(imp, "extension_suffixes", NULL);
    const char *kinds[3][2] = {{NULL, "ExtensionFileLoader"}, {"SOURCE_SUFFIXES", NULL},
                               {"BYTECODE_SUFFIXES", "SourcelessFileLoader"}};
    for (int k = 0; ext && k < 3; k++) {
        PyObject *suffixes = kinds[k][0] ? PyObject_GetAttrString(bs, kinds[k][0])
                                         : Py_NewRef(ext);
        PyObject *loader = kinds[k][1] ? PyObject_GetAttrString(bs, kinds[k][1])
                                       : Py_NewRef(p->obj[IO_SOURCE_LOADER]);
        int ok = suffixes && loader && PyList_Check(suffixes);
        if (ok && k > 0) {
            Py_XSETREF(p->suffixes[k - 1], Py_NewRef(suffixes));
            Py_XSETREF(p->suffixes_seen[k - 1], PyList_AsTuple(suffixes));
            ok = p->suffixes_seen[k - 1] != NULL;
        }
        for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(suffixes); i++) {
            PyObject *pair = PyTuple_Pack(2, PyList_GET_ITEM(suffixes, i), loader);
            ok = pair && PyList_Append(out, pair) == 0;
            Py_XDECREF(pair);
        }
        Py_XDECREF(suffixes); Py_XDECREF(loader);
        if (!ok && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "importlib's suffix lists are not lists");
        if (!ok) Py_CLEAR(out);
    }
    Py_XDECREF(imp); Py_XDECREF(bs); Py_XDECREF(ext);
    return out;
}

/* 1 when importlib's suffix lists hold what they held when the hooks were judged. */
static int suffixes_unchanged(hook_priv *p) {
    for (int k = 0; k < 2; k++) {
        PyObject *l = p->suffixes[k], *t = p->suffixes_seen[k];
        if (!l || !t || PyList_GET_SIZE(l) != PyTuple_GET_SIZE(t)) return 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++)
            if (PyList_GET_ITEM(l, i) != PyTuple_GET_ITEM(t, i)) return 0;
    }
    return 1;
}

/* 1 when sys.path_hooks would give `dir` a FileFinder with stock's default loaders: the
   hooks are [zipimport.zipimporter (declines a directory), a hook that made such a finder
   when tried on `dir`], judged once for given hook objects; 0 not, -1 error. */
static int default_hooks(hook_priv *p, PyObject *dir) {
    PyObject *hooks = PySys_GetObject("path_hooks");      /* borrowed */
    if (!hooks || !PyList_CheckExact(hooks) || PyList_GET_SIZE(hooks) != 2) return 0;
    PyObject *h0 = PyList_GET_ITEM(hooks, 0), *h1 = PyList_GET_ITEM(hooks, 1);
    if (h0 == p->hooks[0] && h1 == p->hooks[1])
        return p->hooks_default && suffixes_unchanged(p);
    Py_XSETREF(p->hooks[0], Py_NewRef(h0));
    Py_XSETREF(p->hooks[1], Py_NewRef(h1));
    p->hooks_default = 0;
    PyObject *zip = PyImport_ImportModule("zipimport");
    PyObject *zi = zip ? PyObject_GetAttrString(zip, "zipimporter") : NULL;
    PyObject *finder = zi && zi == h0 ? PyObject_CallOneArg(h1, dir) : NULL;
    PyObject *want = finder ? default_loaders(p) : NULL;
    PyObject *got = want && Py_TYPE(finder) == (PyTypeObject *)p->obj[IO_FILE_FINDER]
                    ? PyObject_GetAttr(finder, s_loaders) : NULL;
    int same = got ? PyObject_RichCompareBool(got, want, Py_EQ) : 0;
    Py_XDECREF(zip); Py_XDECREF(zi); Py_XDECREF(finder); Py_XDECREF(want); Py_XDECREF(got);
    if (same < 0 || PyErr_Occurred()) {       /* no verdict: judged again next time */
        Py_CLEAR(p->hooks[0]);
        Py_CLEAR(p->hooks[1]);
        return -1;
    }
    p->hooks_default = same;
    return same && suffixes_unchanged(p);
}

/* 1 when `finder`, sys.path_importer_cache's for `dir`, is a FileFinder for `dir` with stock's
   default loaders (judged once per finder, kept in the validated set as (finder, "_loaders"),
   and again when importlib's suffix lists change): what it finds there is what a new one
   would, its listing being refilled whenever the directory's mtime changes.  0 not, -1 error. */
static int default_finder(hook_priv *p, PyObject *finder, PyObject *dir) {
    if (Py_TYPE(finder) != (PyTypeObject *)p->obj[IO_FILE_FINDER]) return 0;
    PyObject *key = PyTuple_Pack(2, finder, s_loaders);
    int rc = key ? PySet_Contains(p->obj[IO_VALIDATED], key) : -1;
    if (rc == 0) {
        PyObject *path = PyObject_GetAttr(finder, s_path);
        PyObject *got = path ? PyObject_GetAttr(finder, s_loaders) : NULL;
        PyObject *want = got ? default_loaders(p) : NULL;
        rc = want ? PyObject_RichCompareBool(path, dir, Py_EQ) : -1;
        if (rc > 0) rc = PyObject_RichCompareBool(got, want, Py_EQ);
        if (rc > 0 && PySet_Add(p->obj[IO_VALIDATED], key) < 0) rc = -1;
        Py_XDECREF(path); Py_XDECREF(got); Py_XDECREF(want);
    }
    Py_XDECREF(key);
    return rc > 0 ? suffixes_unchanged(p) : rc;
}

/* 1 when directory `dir` has the mtime `stamp` (stat'ed once per process for a directory and
   stamp, kept in the validated set as (dir, stamp) until invalidate_caches), 0 not, -1 error. */
static int stamp_holds(hook_priv *p, PyObject *dir, long long stamp) {
    PyObject *ns = PyLong_FromLongLong(stamp);
    PyObject *key = ns ? PyTuple_Pack(2, dir, ns) : NULL;
    Py_XDECREF(ns);
    int rc = key ? PySet_Contains(p->obj[IO_VALIDATED], key) : -1;
    if (rc == 0) {
        PyObject *fs = PyUnicode_EncodeFSDefault(dir);
        struct stat st;
        if (!fs) rc = -1;
        else if (stat(PyBytes_AS_STRING(fs), &st) == 0 && S_ISDIR(st.st_mode)
                 && (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec == stamp)
            rc = PySet_Add(p->obj[IO_VALIDATED], key) < 0 ? -1 : 1;
        Py_XDECREF(fs);
    }
    Py_XDECREF(key);
    return rc;
}

/* 1: stock would find the recorded file, its name in *full; 0: not proven; -1: error. */
static int by_stamps(hook_priv *p, PyObject *path, const recorded *rec,
                     const rm_entry_info *info, PyObject **full) {
    if (!(info->flags & MOD_FIRST_IN_DIR) || !info->dir_mtime_ns
        || (rec->package && !info->pkg_mtime_ns)
        || !PyList_CheckExact(path) || PyList_GET_SIZE(path) != 1)
        return 0;
    PyObject *dir = PyList_GET_ITEM(path, 0);
    if (!PyUnicode_CheckExact(dir) || PyUnicode_GET_LENGTH(dir) == 0
        || PyUnicode_READ_CHAR(dir, 0) != '/' || PyUnicode_Compare(dir, rec->dir) != 0)
        return 0;
    PyObject *cache = PySys_GetObject("path_importer_cache");      /* borrowed */
    if (!cache || !PyDict_CheckExact(cache)) return 0;
    PyObject *cached = PyDict_GetItemWithError(cache, dir);         /* borrowed */
    if (!cached && PyErr_Occurred()) return -1;
    int rc = cached ? default_finder(p, cached, dir) : 1;
    if (rc <= 0) return rc;                     /* another finder: look_in's way decides */
    Py_INCREF(dir);                             /* (path may change under the calls below) */
    PyObject *base = NULL, *file = NULL;
    rc = stamp_holds(p, dir, info->dir_mtime_ns);
    if (rc > 0 && rec->package) {
        base = path_join(dir, rec->tail);
        rc = base ? stamp_holds(p, base, info->pkg_mtime_ns) : -1;
    }
    if (rc > 0 && !cached) rc = default_hooks(p, dir);  /* (dir exists: can be tried) */
    if (rc > 0) {
        file = rec->package ? Py_NewRef(s_init_py) : PyUnicode_FromFormat("%U.py", rec->tail);
        *full = file ? path_join(rec->package ? base : dir, file) : NULL;
        if (!*full) rc = -1;
        else if (PyUnicode_Compare(*full, rec->path) != 0) { Py_CLEAR(*full); rc = 0; }
    }
    Py_DECREF(dir); Py_XDECREF(base); Py_XDECREF(file);
    return rc;
}

/* Walks path `entries` (sys.path or a package's __path__; NULL: 0) as PathFinder._get_spec
   does, entries that are not str skipped and so are those without a finder, asking `look` of
   each FileFinder while it answers 1 (nothing there for the name).  Returns its last answer:
   2 found (the file in *full), 1 nothing anywhere, 0 not proven (`look` said so, or an entry
   has another kind of finder), -1 error. */
typedef int (*look_fn)(hook_priv *p, PyObject *finder, const void *what, PyObject **full);
static int walk_entries(hook_priv *p, PyObject *entries, look_fn look, const void *what,
                        PyObject **full) {
    PyObject *it = entries ? PyObject_GetIter(entries) : NULL, *entry;
    if (!it) return entries ? -1 : 0;
    int found = 1;
    while (found == 1 && (entry = PyIter_Next(it))) {
        PyObject *finder = PyUnicode_Check(entry) ? entry_finder(p, entry) : Py_NewRef(Py_None);
        Py_DECREF(entry);
        if (!finder) found = -1;
        else if (finder == Py_None) found = 1;
        else if (Py_TYPE(finder) != (PyTypeObject *)p->obj[IO_FILE_FINDER]) found = 0;
        else found = look(p, finder, what, full);
        Py_XDECREF(finder);
    }
    Py_DECREF(it);
    if (found >= 0 && PyErr_Occurred()) found = -1;
    if (found < 0) Py_CLEAR(*full);
    return found;
}

/* ---- Extension modules on sys.path ------------------------------------------------------ *
 * A top-level name the image does not hold is, as often as not, an extension module of the
 * standard library's lib-dynload (math, _json, _socket...), which stock import finds by asking
 * the FileFinder of every sys.path entry before it, in Python.  The same listings prove where
 * stock would find it: every entry before has a FileFinder whose listing holds no candidate
 * for the name, and the entry's listing has name + an extension suffix as the first candidate
 * its loaders try, a regular file, as FileFinder checks.  Anything else (a directory of that
 * name, a source or bytecode file first, another kind of finder, no candidate anywhere) is
 * left to PathFinder.  The spec is made as FileFinder._get_spec makes it. */

/* -1 error, 0 not proven (something else stock would consider), 1 nothing there for `what`
   (the name, str), 2 an extension module, its file in *full (walk_entries calls it). */
static int look_for_extension(hook_priv *p, PyObject *finder, const void *what,
                              PyObject **full) {
    PyObject *name = (PyObject *)what, *dir, *cache, *loaders;
    int rc = finder_listing(p, finder, &dir, &cache, &loaders);
    if (rc <= 0) return rc;
    rc = 0;
    int has_dir = PySet_Contains(cache, name);      /* a package or namespace portion */
    if (has_dir) { rc = has_dir < 0 ? -1 : 0; goto done; }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(loaders); i++) {
        PyObject *pair = PyList_GET_ITEM(loaders, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) goto done;
        PyObject *file = PyUnicode_Concat(name, PyTuple_GET_ITEM(pair, 0));
        int there = file ? PySet_Contains(cache, file) : -1;
        if (there <= 0) { Py_XDECREF(file); if (there < 0) { rc = -1; goto done; } continue; }
        if (PyTuple_GET_ITEM(pair, 1) != p->obj[IO_EXT_LOADER]) { Py_DECREF(file); goto done; }
        PyObject *cand = path_join(dir, file);
        Py_DECREF(file);
        int is_file = cand ? is_regular_file(cand) : -1;
        if (is_file) {
            if (is_file > 0) { *full = cand; rc = 2; }
            else { Py_XDECREF(cand); rc = -1; }
            goto done;
        }
        Py_DECREF(cand);                    /* FileFinder goes on with the next suffix */
    }
    rc = 1;
done:
    Py_XDECREF(dir); Py_XDECREF(cache); Py_XDECREF(loaders);
    return rc;
}

/* look_for_extension as FileFinder would look now, for a name look_for_extension found nowhere
   moments ago: the listing is refilled when its directory's mtime is no longer the one it was
   filled at, and only then looked at again (walk_entries calls it). */
static int look_again_now(hook_priv *p, PyObject *finder, const void *what, PyObject **full) {
    PyObject *dir = PyObject_GetAttr(finder, s_path);
    if (!dir || !PyUnicode_Check(dir)) {        /* not FileFinder's: not proven */
        Py_XDECREF(dir);
        return dir ? 0 : -1;
    }
    int refilled = refill_if_changed(finder, dir);
    Py_DECREF(dir);
    return refilled > 0 ? look_for_extension(p, finder, what, full) : refilled < 0 ? -1 : 1;
}

/* 1: the spec of top-level extension module `fullname` (a name with no dot, asked for with
   path None: is_top_level) in *out; 2: no sys.path entry has a candidate for the name (by
   listings checked once per process); 0: not proven; -1: error. */
static int find_extension(rm_hook *h, PyObject *fullname, PyObject **out) {
    hook_priv *p = h->priv;
    PyObject *full = NULL;
    int found = walk_entries(p, PySys_GetObject("path"), look_for_extension, fullname, &full);
    if (found == 1) return 2;
    if (found != 2) return found < 0 ? -1 : 0;
    PyObject *loader = PyObject_CallFunctionObjArgs(p->obj[IO_EXT_LOADER], fullname, full, NULL);
    PyObject *args = loader ? PyTuple_Pack(2, fullname, full) : NULL;
    PyObject *kw = args ? Py_BuildValue("{sOsO}", "loader", loader,
                                        "submodule_search_locations", Py_None) : NULL;
    *out = kw ? PyObject_Call(p->obj[IO_SPEC_FROM_FILE], args, kw) : NULL;
    Py_XDECREF(loader); Py_XDECREF(args); Py_XDECREF(kw); Py_DECREF(full);
    if (!*out) return -1;
    h->extensions++;
    return 1;
}

/* ---- Names nobody provides ------------------------------------------------------------- *
 * A top-level name that is not in the image, not built in or frozen and has no candidate in
 * any sys.path entry (`try: import nt`, optional dependencies: boto3 asks for 21 such names)
 * costs stock a walk of sys.path in Python, PathFinder's, then the finders after it, and the
 * import raises ModuleNotFoundError.  When every entry's FileFinder listing, checked against
 * its directory now (FileFinder does that at every call, so a module created since is seen as
 * stock sees it), has no candidate, PathFinder would return None: the finder asks the finders
 * after PathFinder itself, in order, and returns the first spec one gives, else raises stock's
 * ModuleNotFoundError.
 * Only for an import statement, __import__ or importlib.import_module... that C import runs:
 * the caller must be frozen importlib's _find_spec called by _find_and_load_unlocked called by
 * _find_and_load, not called by _gcd_import.  C import then removes importlib's frames from
 * the exception's traceback, as it does from stock's.  importlib.util.find_spec and any other
 * caller gets None, and PathFinder's answer, as stock. */

/* 1 when the running Python frames are those of C import's find (above), 0 not, -1 error. */
static int called_by_import(hook_priv *p) {
    if (!p->codes_known) {
        PyObject *bs = PyImport_ImportModule("_frozen_importlib");
        p->codes_known = 1;
        for (int i = 0; i < CODE_COUNT; i++) {
            PyObject *f = bs ? PyObject_GetAttrString(bs, code_names[i]) : NULL;
            p->code[i] = f ? PyObject_GetAttrString(f, "__code__") : NULL;
            Py_XDECREF(f);
            if (!p->code[i] || !PyCode_Check(p->code[i])) p->codes_known = -1;
        }
        Py_XDECREF(bs);
        PyErr_Clear();
    }
    if (p->codes_known < 0) return 0;
    /* the frames from ours outwards: _find_spec, _find_and_load_unlocked, _find_and_load,
       then anything but _gcd_import (or no frame: C import called by C) */
    PyFrameObject *f = PyEval_GetFrame();       /* borrowed */
    Py_XINCREF(f);
    int rc = 1;
    for (int i = 0; i < CODE_COUNT; i++) {
        if (!f) { rc = i == CODE_GCD_IMPORT; break; }
        PyCodeObject *code = PyFrame_GetCode(f);
        int same = (PyObject *)code == p->code[i];
        Py_DECREF(code);
        if (same != (i != CODE_GCD_IMPORT)) { rc = 0; break; }
        Py_SETREF(f, PyFrame_GetBack(f));
    }
    Py_XDECREF(f);
    return rc;
}

/* A top-level name find_extension found no candidate for: 1 answered (the spec of a finder
   after PathFinder in *out, or ModuleNotFoundError set and *out NULL); 0 not proven, the
   import goes on as stock; -1 error. */
static int answer_absent(rm_hook *h, PyObject *fullname, PyObject *target, PyObject **out) {
    hook_priv *p = h->priv;
    int rc = called_by_import(p);
    if (rc <= 0) return rc;
    PyObject *full = NULL;
    rc = walk_entries(p, PySys_GetObject("path"), look_again_now, fullname, &full);
    Py_XDECREF(full);
    if (rc != 1) return rc < 0 ? -1 : 0;
    PyObject *mp = PySys_GetObject("meta_path");          /* borrowed */
    if (!mp || !PyList_Check(mp)) return 0;
    Py_ssize_t at = PySequence_Index(mp, p->obj[IO_PATH_FINDER]);
    if (at < 0) { PyErr_Clear(); return 0; }
    PyObject *later = PyList_GetSlice(mp, at + 1, PyList_GET_SIZE(mp)), *finds = NULL;
    Py_ssize_t n = later ? PyList_GET_SIZE(later) : 0;
    if (later) finds = PyList_New(n);
    for (Py_ssize_t i = 0; finds && i < n; i++) {     /* their find_spec, None when none */
        PyObject *find = PyObject_GetAttr(PyList_GET_ITEM(later, i), s_find_spec);
        if (!find && PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
#if PY_VERSION_HEX < 0x030c0000
            /* Version difference: 3.11's _find_spec falls back to the finder's find_module
               (_find_spec_legacy): stock's walk does that */
            Py_CLEAR(finds);
            rc = 0;
            break;
#endif
            find = Py_NewRef(Py_None);       /* 3.12+: _find_spec skips such a finder */
        }
        if (!find) Py_CLEAR(finds);
        else PyList_SET_ITEM(finds, i, find);
    }
    Py_XDECREF(later);
    if (!finds) return rc == 0 ? 0 : -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *find = PyList_GET_ITEM(finds, i);
        if (find == Py_None) continue;
        PyObject *spec = PyObject_CallFunctionObjArgs(find, fullname, Py_None, target, NULL);
        if (!spec || spec != Py_None) {         /* its error is stock's too */
            Py_DECREF(finds);
            *out = spec;
            return spec ? 1 : -2;
        }
        Py_DECREF(spec);
    }
    Py_DECREF(finds);
    PyObject *msg = PyUnicode_FromFormat("No module named %R", fullname);
    PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
    PyObject *kw = args ? Py_BuildValue("{sO}", "name", fullname) : NULL;
    PyObject *exc = kw ? PyObject_Call(PyExc_ModuleNotFoundError, args, kw) : NULL;
    Py_XDECREF(msg); Py_XDECREF(args); Py_XDECREF(kw);
    if (!exc) return -1;
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    h->absent++;
    return 1;
}

/* 1: the spec (in *out); 0: not proven, ask PathFinder; -1: error. */
static int find_directly(rm_hook *h, PyObject *hook_cap, PyObject *fullname, PyObject *path,
                         const rm_entry_info *info, PyObject **out) {
    hook_priv *p = h->priv;
    recorded rec = {0};
    PyObject *full = NULL, *loader = NULL;
    int rc = recorded_for(fullname, info, &rec);
    if (rc <= 0) goto done;
    rc = -1;
    int stamped = by_stamps(p, path, &rec, info, &full);
    if (stamped < 0) goto done;
    if (!stamped) {
        int found = walk_entries(p, path == Py_None ? PySys_GetObject("path") : path, look_in,
                                 &rec, &full);
        if (found < 0) goto done;
        rc = 0;
        if (found != 2) goto done;              /* ran out of entries, or not proven */
    }
    /* (checked mode compares the source with the image's record in get_code, where stock
       reads the source's stamps too) */
    rc = -1;
    /* stock's spec_from_file_location leaves an absolute file name as it is */
    int templated = learn(p) > 0 && PyUnicode_READ_CHAR(full, 0) == '/';
    PyObject *given[V_CONST] = {fullname, NULL, full, NULL};
    loader = templated ? make_like(&p->loader_tmpl, given)
                       : PyObject_CallFunctionObjArgs(p->obj[IO_LOADER_TYPE], fullname, full,
                                                      NULL);
    if (!loader || PyObject_SetAttr(loader, s_hook, hook_cap) < 0) goto done;
    PyObject *base = rec.package ? path_join(rec.dir, rec.tail) : NULL;   /* its __path__ */
    PyObject *smsl = !rec.package ? Py_NewRef(Py_None) : base ? Py_BuildValue("[O]", base) : NULL;
    Py_XDECREF(base);
    if (smsl && templated) {
        given[V_LOADER] = loader;
        given[V_SMSL] = smsl;
        *out = make_like(&p->spec_tmpl[rec.package], given);
    } else if (smsl) {
        PyObject *args = PyTuple_Pack(2, fullname, full);
        PyObject *kw = args ? Py_BuildValue("{sOsO}", "loader", loader,
                                            "submodule_search_locations", smsl) : NULL;
        *out = kw ? PyObject_Call(p->obj[IO_SPEC_FROM_FILE], args, kw) : NULL;
        Py_XDECREF(args); Py_XDECREF(kw);
    }
    Py_XDECREF(smsl);
    if (!*out) goto done;
    if (PyObject_SetAttr(loader, s_spec, *out) < 0) { Py_CLEAR(*out); goto done; }
    h->direct++;
    h->stamped += stamped;
    rc = 1;
done:
    Py_XDECREF(rec.tail); Py_XDECREF(rec.path); Py_XDECREF(rec.dir);
    Py_XDECREF(full); Py_XDECREF(loader);
    return rc;
}

/* After an error in our own steps: an ordinary exception is dropped (1) and the import goes
   the stock way, as rule 1 wants; KeyboardInterrupt, SystemExit and the like go on (0). */
static int stepped_aside(void) {
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return 0;
    PyErr_Clear();
    return 1;
}

static PyObject *finder_find_spec(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    static const char *const names[] = {"fullname", "path", "target"};
    PyObject *a[3] = {NULL, Py_None, Py_None};
    if (parse_args("find_spec", args, nargs, kwnames, names, 3, 1, a) < 0) return NULL;
    PyObject *fullname = a[0];
    PyObject *cap = PyObject_GetAttr(self, s_hook);
    if (!cap) return NULL;
    PyObject *result = NULL, *spec = NULL;
    rm_hook *h = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
    if (!h) goto done;
    hook_priv *p = h->priv;
    if (h->disabled) { result = Py_NewRef(Py_None); goto done; }
    int failed = PySet_Contains(p->obj[IO_FAILED], fullname);
    if (failed < 0) goto done;
    if (failed) { h->fallbacks++; result = Py_NewRef(Py_None); goto done; }
    char err[ERRLEN];
    rm_entry_info info;
    int index = find_name(p->image, fullname, err);
    if (index >= 0 && rm__check_entry(p->image->img, (uint32_t)index, &info, err, ERRLEN) < 0)
        index = -2;
    int ahead = 0;            /* (not in the image: only a top-level name may be served) */
    if ((index == -1 && !is_top_level(fullname, a[1]))
        || (index >= -1 && !stock_order(self, p, &ahead))) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    int theirs = index >= -1 && ahead ? builtin_or_frozen(p, fullname) : 0;
    if (theirs) {
        if (theirs > 0) result = Py_NewRef(Py_None);
        goto done;
    }
    if (index == -1) {        /* not in the image: an extension module, or PathFinder's */
        int ext = find_extension(h, fullname, &result);
        if (ext == 2) {       /* nowhere on sys.path: perhaps answered here */
            ext = answer_absent(h, fullname, a[2], &result);
            if (ext == -2) goto done;           /* a later finder's own error */
        }
        if (ext > 0 || (ext < 0 && !stepped_aside())) goto done;
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (index < 0) {          /* a bad directory: the image can no longer be trusted */
        h->disabled = 1;      /* (not removed from sys.meta_path while it is being walked) */
        say(p, PyUnicode_FromFormat("%U: %s; image disabled", p->image->path, err));
        result = Py_NewRef(Py_None);
        goto done;
    }
    int direct = find_directly(h, cap, fullname, a[1], &info, &result);
    if (direct > 0 || (direct < 0 && !stepped_aside())) goto done;
    PyObject *find = PyObject_GetAttr(p->obj[IO_PATH_FINDER], s_find_spec);
    if (!find) goto done;
    spec = PyObject_CallFunctionObjArgs(find, fullname, a[1], a[2], NULL);
    Py_DECREF(find);
    if (!spec) goto done;       /* PathFinder's own error: stock raises it too */
    result = spec == Py_None ? Py_NewRef(spec) : serve_from_image(h, cap, fullname, spec, &info);
    if (!result && stepped_aside()) result = Py_NewRef(spec);
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
        *stock = path ? PyObject_CallFunctionObjArgs(p->obj[IO_SOURCE_LOADER], fullname, path, NULL)
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
    PyObject *exec = frame ? PyObject_GetAttrString(p->obj[IO_SOURCE_LOADER], "exec_module") : NULL;
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

/* Checked mode: 1 when the loader's file has the mtime and size module `index` recorded (its
   directory entry checked again; an unusable one: 0, stock then), 0 not, -1 error. */
static int fresh_source(hook_priv *p, PyObject *self, uint32_t index, char *err) {
    rm_entry_info info;
    if (rm__check_entry(p->image->img, index, &info, err, ERRLEN) < 0) return 0;
    PyObject *path = PyObject_GetAttr(self, s_path), *fs = NULL;
    int fresh = path && PyUnicode_FSConverter(path, &fs)
                ? source_unchanged(PyBytes_AS_STRING(fs), &info) : -1;
    Py_XDECREF(path); Py_XDECREF(fs);
    return fresh;
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
        if (index >= 0 && h->checked) {
            int fresh = fresh_source(p, self, (uint32_t)index, err);
            if (fresh < 0) goto fail;
            if (!fresh) {         /* edited since the build: stock, as PathFinder's spec is */
                h->fallbacks++;
                use_stock_loader(p, self, fullname);
                goto as_stock;
            }
        }
        code = index < 0 ? NULL : rm__load(p->image->img, (uint32_t)index, err, ERRLEN);
        if (code) {
            h->hits++;
            Py_INCREF(code);
            use_stock_loader(p, self, fullname);
            Py_DECREF(cap);
            return code;
        }
        if (index == -1) snprintf(err, ERRLEN, "not in the image");
        if (PySet_Add(p->obj[IO_FAILED], fullname) < 0) goto fail;
        h->fallbacks++;
        say(p, PyUnicode_FromFormat("%U: module %U: %s", p->image->path, fullname, err));
    }
as_stock:
    /* stock: SourceFileLoader's own get_code (looked up now: a profiler may wrap it) */
    PyObject *stock = PyObject_GetAttrString(h ? ((hook_priv *)h->priv)->obj[IO_SOURCE_LOADER]
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
static void image_ref_free(image_ref *ir) {
    if (!ir) return;
    if (ir->owns) rm_close(ir->img);  /* (keeps the memory when anything lives in it) */
    Py_XDECREF(ir->path);
    Py_XDECREF(ir->error_type);
    free(ir);
}

static void image_capsule_free(PyObject *cap) {
    image_ref *ir = PyCapsule_GetPointer(cap, IMAGE_CAPSULE);
    if (!ir) PyErr_Clear();
    image_ref_free(ir);
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
        PyObject *cap = PyCapsule_New(ir, IMAGE_CAPSULE, image_capsule_free);
        if (cap) {
            ir = NULL;        /* the capsule owns it */
            rc = PyList_Append(list, cap);
            Py_DECREF(cap);
        }
    }
    image_ref_free(ir);
    if (rc < 0) PyErr_Clear();
    PyGILState_Release(g);
    return rc;
}

/* A capsule that owns img (closed when the capsule goes), for a finder opened by the hook's C
   module alone (rm_hook.c: open_finder); GIL held.  NULL with an exception. */
PyObject *rm_image_capsule_owning(rm_image *img, PyObject *path) {
    image_ref *ir = calloc(1, sizeof *ir);
    if (!ir) return PyErr_NoMemory();
    ir->img = img;
    ir->path = Py_NewRef(path);
    PyObject *cap = PyCapsule_New(ir, IMAGE_CAPSULE, image_capsule_free);
    if (cap) ir->owns = 1;
    else image_ref_free(ir);
    return cap;
}

/* The rm_image behind an image capsule, and the error type its API errors get from now on
   (when error_type is not NULL); NULL with an exception. */
rm_image *rm_image_capsule_adopt(PyObject *cap, PyObject *error_type) {
    image_ref *ir = PyCapsule_GetPointer(cap, IMAGE_CAPSULE);
    if (!ir) return NULL;
    if (error_type) Py_XSETREF(ir->error_type, Py_NewRef(error_type));
    return ir->img;
}

static void hook_free(rm_hook *h, hook_priv *p) {
    if (p) {
        for (int i = 0; i < IO_COUNT; i++) Py_XDECREF(p->obj[i]);
        made_like_clear(&p->spec_tmpl[0]);
        made_like_clear(&p->spec_tmpl[1]);
        made_like_clear(&p->loader_tmpl);
        for (int i = 0; i < CODE_COUNT; i++) Py_XDECREF(p->code[i]);
        for (int i = 0; i < 2; i++) {
            Py_XDECREF(p->hooks[i]); Py_XDECREF(p->suffixes[i]); Py_XDECREF(p->suffixes_seen[i]);
        }
    }
    free(p);
    free(h);
}

static void hook_capsule_free(PyObject *cap) {
    rm_hook *h = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
    if (h) hook_free(h, h->priv);
    else PyErr_Clear();
}

/* io: a list of the IO_COUNT objects above; the hook's capsule (which owns the returned
   rm_hook) is appended to it. */
rm_hook *rm_hook_new(int checked, void *io) {
    rm_hook *result = NULL;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *list = (PyObject *)io, *cap = NULL;
    rm_hook *h = calloc(1, sizeof *h);
    hook_priv *p = calloc(1, sizeof *p);
    if (!h || !p || !PyList_Check(list) || PyList_GET_SIZE(list) != IO_COUNT
        || intern_names() < 0)
        goto fail;
    PyObject *image = PyList_GET_ITEM(list, IO_IMAGE);    /* an AccelImage, or its capsule */
    p->image = PyCapsule_CheckExact(image) ? PyCapsule_GetPointer(image, IMAGE_CAPSULE)
                                           : capsule_of(image, "_capsule", IMAGE_CAPSULE);
    if (!p->image || !PySet_Check(PyList_GET_ITEM(list, IO_FAILED))
        || !PySet_Check(PyList_GET_ITEM(list, IO_VALIDATED)))
        goto fail;
    for (int i = 0; i < IO_COUNT; i++) p->obj[i] = Py_NewRef(PyList_GET_ITEM(list, i));
    h->checked = checked;
    h->priv = p;
    cap = PyCapsule_New(h, HOOK_CAPSULE, hook_capsule_free);
    if (!cap) goto fail;
    h = NULL; p = NULL;       /* the capsule owns them */
    if (PyList_Append(list, cap) < 0) goto fail;
    result = PyCapsule_GetPointer(cap, HOOK_CAPSULE);
fail:
    hook_free(h, p);          /* NULLs once the capsule owns them */
    Py_XDECREF(cap);          /* the list keeps it */
    if (!result) PyErr_Clear();
    PyGILState_Release(g);
    return result;
}

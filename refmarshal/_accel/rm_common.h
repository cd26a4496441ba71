/* What the loader (rm_loader.c) and the C writer (rm_writer.c) share: the format's constants
 * and record layouts (rm_format.h, generated from refmarshal/format.py by
 * spec/tools/gen_c_header.py), the error macro, and binding the Python list that objects
 * travel through (cffi has no PyObject* arguments or results).
 * Internal: cffi does not see this header.  Include it after every Python header. */
#ifndef RM_COMMON_H
#define RM_COMMON_H

#include <Python.h>

#include "rm_format.h"

/* In a function with `char *err, int errlen` and a `fail:` label. */
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

/* Points *slot at the list module.attr (one reference, kept); 0 or -1. */
int rm_bind_list(const char *module, const char *attr, PyObject **slot);

#endif

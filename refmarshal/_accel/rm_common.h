/* What the loader (rm_loader.c) and the C writer (rm_writer.c) share: the format's constants
 * (spec sections 2-5; refmarshal/format.py has the same), the error macro, and binding the
 * Python list that objects travel through (cffi has no PyObject* arguments or results).
 * Internal: cffi does not see this header. */
#ifndef RM_COMMON_H
#define RM_COMMON_H

#include <Python.h>

#define HEADER_SIZE 256
#define MODULE_SIZE 80
#define STRING_SIZE 16
enum { R_TYPE, R_CONST, R_STR, R_FROZENSET, R_PTR, R_KINDS };        /* relocation kinds, 5.3 */
enum { T_STR = 1, T_BYTES, T_TUPLE, T_INT, T_FLOAT, T_COMPLEX, T_CODE };   /* type codes, 5.2 */
#define C_SMALL_INT 0x100                                                /* singleton ids, 5.4 */
#define C_LATIN1 0x300
#define C_BYTE 0x400
#define C_END 0x500

/* In a function with `char *err, int errlen` and a `fail:` label. */
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

/* Points *slot at the list module.attr (one reference, kept); 0 or -1. */
int rm_bind_list(const char *module, const char *attr, PyObject **slot);

#endif

/* What the loader (rm_loader.c) and the C writer (rm_writer.c) share: the format's constants
 * and record layouts (rm_format.h, generated from refmarshal/format.py by
 * spec/tools/gen_c_header.py), the error macro, and binding the Python list that objects
 * travel through (cffi has no PyObject* arguments or results).
 * Internal: cffi does not see this header.  Include it after every Python header. */
#ifndef RM_COMMON_H
#define RM_COMMON_H

#include <Python.h>
#include <stdint.h>

#include "rm_format.h"

/* Sizes the format derives from counts, as format.py computes them (one C copy for the
   loader, the hook's header check and the writer). */
static inline uint64_t rm_lookup_slots(uint64_t modules) {      /* [LKP-1] */
    uint64_t slots = 1;
    while (slots < 2 * modules) slots *= 2;
    return slots;
}
static inline uint64_t rm_lookup_groups(uint64_t slots) {       /* [LKP-1] */
    return (slots + LOOKUP_GROUP - 1) / LOOKUP_GROUP;
}
static inline uint64_t rm_lookup_size(uint64_t modules) {       /* format.lookup_size */
    uint64_t slots = rm_lookup_slots(modules);
    return RM_LOOKUPHEAD_BYTES + 4 * rm_lookup_groups(slots) + slots * RM_LOOKUP_BYTES;
}
static inline uint64_t rm_bitmap_bytes(uint64_t segment_size) { /* [SEG-2] */
    return (segment_size + BITMAP_COVER - 1) / BITMAP_COVER * RM_ALIGN;
}

/* In a function with `char *err, int errlen` and a `fail:` label. */
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

/* Points *slot at the list module.attr (one reference, kept); 0 or -1. */
int rm_bind_list(const char *module, const char *attr, PyObject **slot);

#endif

/* The second writer's interface, as cffi sees it (build_accel.py cdefs the same declarations).
 * Reading order: rm_writer.h, then rm_writer.c from the top (version block, plan, encode).
 *
 * Objects travel through one Python list, the box (refmarshal._accel.writer._box, bound once
 * by rm_writer_bind; cffi has no PyObject* arguments or results).  Each call expects the box
 * to hold exactly what this table says, and leaves in it what the last column says; Python
 * fills and reads it only in _accel/writer.py (_plan_module, _encode_module, _encode_strings).
 *
 *   call               box before the call                    box after it (on success)
 *   rm_plan_module     [code object, {}, order(frozenset)]    unchanged; the dict now maps
 *                      order returns the frozenset's items     (str, True) -> str for the
 *                      as a tuple in [OBJ-9] order            module's interned strings, in
 *                                                              order of first use
 *   rm_plan_add_strings [[str, ...]: the interned strings     unchanged
 *                      only this module uses ([SEG-5])
 *   rm_encode_module   [{(str, True): string index}]          [segment bytes, bitmap bytes,
 *                                                              root offset]
 *                                                              (container.EncodedSegment)
 *   rm_encode_strings  [[str, ...] in string index order]     [string heap bytes]; sizes[i]
 *                                                              is string i's padded size
 */
typedef struct rm_plan rm_plan;

int rm_writer_bind(const char *module, const char *attr);
rm_plan *rm_plan_module(char *err, int errlen);
int rm_plan_add_strings(rm_plan *plan, char *err, int errlen);
int rm_encode_module(rm_plan *plan, unsigned long long seg_addr, char *err, int errlen);
void rm_plan_free(rm_plan *plan);
int rm_encode_strings(unsigned int *sizes, char *err, int errlen);

/* The second writer's interface, as cffi sees it (build_accel.py cdefs the same declarations).
 * Objects travel through a Python list bound once (cffi has no PyObject* arguments).
 * Reading order: rm_writer.h, then rm_writer.c from the top (version block, plan, encode). */
typedef struct rm_plan rm_plan;

int rm_writer_bind(const char *module, const char *attr);
rm_plan *rm_plan_module(char *err, int errlen);
unsigned long long rm_plan_size(rm_plan *plan);
int rm_encode_module(rm_plan *plan, unsigned long long seg_addr, char *err, int errlen);
void rm_plan_free(rm_plan *plan);
int rm_encode_strings(unsigned int *sizes, char *err, int errlen);

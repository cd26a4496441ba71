/* The accelerator's interface, as cffi sees it (build_accel.py cdefs the same declarations).
 * Reading order: rm_loader.h, then rm_loader.c from the top (version block, open, load). */
typedef struct rm_image rm_image;

int rm_bind_inbox(const char *module, const char *attr);
rm_image *rm_open(const char *path, char *err, int errlen);
void rm_close(rm_image *img);
const unsigned char *rm_base(rm_image *img);
unsigned long long rm_size(rm_image *img);
int rm_relocated(rm_image *img);
int rm_load_module(rm_image *img, unsigned int index, char *err, int errlen);
unsigned long rm_python_version(void);

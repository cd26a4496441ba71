/* The accelerator's interface, as cffi sees it (build_accel.py cdefs the same declarations).
 * Reading order: rm_loader.h, then rm_loader.c from the top (version block, CRC, memory,
 * directory, strings, loading), then rm_import.c (what the import system calls). */
typedef struct rm_image rm_image;

/* How rm_open brings the file's bytes into memory.  Images are read on demand into anonymous
 * memory; RM_MODE_FILE_MAPPING (a private mapping of the whole file) exists for the benchmark
 * that compares the two. */
#define RM_MODE_HUGE_PAGES 0
#define RM_MODE_SMALL_PAGES 1
#define RM_MODE_FILE_MAPPING 2
/* RM_MODE_AUTO: huge pages where a huge-page fault cannot stall on compaction (transparent huge
 * pages enabled, and "defrag" set so that madvised regions do not compact synchronously:
 * "defer" or "never"), small pages otherwise. */
#define RM_MODE_AUTO 3

typedef struct {
    unsigned int flags;
    const char *name;
    unsigned int name_len;
    const char *path;
    unsigned int path_len;
    long long mtime_ns;
    unsigned long long size;
    unsigned long long seg_off;
    unsigned int seg_size, root, data_crc;
    long long dir_mtime_ns, pkg_mtime_ns;     /* directory stamps, 0 when not recorded */
} rm_entry_info;

rm_image *rm_open(const char *path, int mode, char *err, int errlen);
void rm_close(rm_image *img);
const unsigned char *rm_base(rm_image *img);
unsigned long long rm_size(rm_image *img);
int rm_relocated(rm_image *img);
unsigned int rm_module_count(rm_image *img);
unsigned long long rm_bytes_read(rm_image *img);
int rm_entry(rm_image *img, unsigned int index, rm_entry_info *out, char *err, int errlen);
int rm_find(rm_image *img, const char *name, size_t len, char *err, int errlen);
unsigned int rm_crc32(unsigned int crc, const unsigned char *p, size_t n);
int rm_crc32_uses_clmul(void);
unsigned long rm_python_version(void);
int rm_huge_pages_safe(void);
unsigned int rm_code_version(void *code);
int rm_code_counter_found(void);

/* rm_import.c: the methods the import system calls (find_spec, get_code) are C methods,
 * installed on the Python classes; Python objects cross by address (id()), since cffi has no
 * PyObject* arguments.  An rm_hook is one ImageFinder's state: Python reads and sets the fields
 * before priv; its capsule (appended to io by rm_hook_new) owns it. */
typedef struct {
    int checked;
    int disabled;
    long long hits;
    long long fallbacks;
    long long direct;
    long long stamped;        /* of the direct specs, those proven by directory stamps */
    long long extensions;     /* extension modules found on sys.path without PathFinder */
    long long absent;         /* imports of names nobody provides answered without PathFinder */
    void *priv;
} rm_hook;

int rm_install_method(void *cls, const char *key);
int rm_image_capsule(rm_image *img, void *io);
rm_hook *rm_hook_new(int checked, void *io);

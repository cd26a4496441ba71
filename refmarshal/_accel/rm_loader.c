/* refmarshal accelerator: bring an image's modules into memory and fix them up in place
 * (spec section 8).
 *
 * C does the mechanics (memory, directory lookup, relocation, interning, code-object set-up);
 * Python decides policy (which image, which module, what to do on failure).  Every failure is
 * reported as a message; a module that fails is never handed out.
 *
 * Memory: one region as large as the file is reserved at the image's preferred base (anywhere
 * else when that is taken: PTR words are then moved by the difference).  It is anonymous and
 * private (with transparent huge pages where RM_MODE_AUTO finds them safe, rm_loader.h), and
 * filled from the file lazily, only where something is read: opening an image costs the same
 * whatever its size, and loading costs grow with what a process imports.  Reading (pread) instead of mapping the file
 * avoids a copy-on-write fault per 4 KiB page written, and a file changed under a running
 * process cannot change loaded code (it can only make later loads fail).
 */
#define Py_BUILD_CORE 1
#include <Python.h>
#include "internal/pycore_interp.h"
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#if defined(__x86_64__)
#  include <cpuid.h>
#  include <immintrin.h>
#endif
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rm_common.h"
#include "rm_loader.h"

/* ---- Version differences: the one place for them (C side) ------------------------------- */
#if PY_VERSION_HEX >= 0x030d0000 && PY_VERSION_HEX < 0x030e0000
#  define RM_CODE_VERSION 1       /* co_version from interp->func_state.next_version */
#  define RM_CODE_WATCHERS 1
#elif PY_VERSION_HEX >= 0x030c0000
#  define RM_CODE_VERSION 2       /* co_version from the hidden _Py_next_func_version: drawn
                                     by creating an empty code object (the only public way)
                                     until the counter is found in memory (find_counter) */
#  define RM_CODE_WATCHERS 1
#elif PY_VERSION_HEX >= 0x030b0000
#  define RM_CODE_VERSION 0       /* 3.11 has no co_version */
#  define RM_CODE_WATCHERS 0
#else
#  error "refmarshal supports CPython 3.11-3.13"
#endif
#ifdef Py_DEBUG
#  error "debug builds make interned strings mortal at exit: not supported (spec [LOAD-4])"
#endif

/* The unit of lazy reading: whole pages, exactly where needed.  A lookup reads one page of the
   lookup table, the entry's page and its name's ([LKP-2]); a module's block is one range;
   the strings it uses lie together ([STR-2]).  (Measured: 4 KiB for strings read a third less
   than 64 KiB for boto3's import and was no slower materialising the whole stdlib.) */
#define PAGE_UNIT 4096
#define HUGE_PAGE (2 * 1024 * 1024)
/* The directory and names sections are read a page at a time too: a lookup reads the page
   of the entry it finds and of its name, and, for each module its probe passes, that entry's
   page only (a name of another length is not read).  Measured on boto3's find phase
   (benchmarks/findphase.py, interleaved builds): 108 reads of a page, 0.2 ms less than 59 reads
   that switched to 64 KiB after 16 (which read the whole 1.1 MB).  A cold image gets the
   sections read ahead at once instead (meta_read_ahead). */

struct rm_image {
    int fd;                       /* kept open: chunks are read on demand */
    int mode;                     /* RM_MODE_* that rm_open was asked for */
    unsigned char *base;          /* start of the region holding the file's bytes */
    uint64_t size, reserved;      /* file size; size of the region (rounded to huge pages) */
    uint64_t preferred;           /* preferred_base from the header */
    uint32_t nmodules, nstrings;
    uint64_t dir_off, names_off, names_size, lookup_off, lookup_slots, sidx_off, sheap_off,
             sheap_size, mheap_off, mheap_size;
    unsigned char *page_ready;    /* per PAGE_UNIT: 1 once read from the file */
    uint64_t bytes_read;          /* how much of the file has been read so far */
    PyObject **strings;           /* resolved strings, by index (NULL: not yet) */
    unsigned char *state;         /* per module: LOAD_* below */
    uint64_t lookup_groups;       /* groups of LOOKUP_GROUP slots, one CRC each ([LKP-1]) */
    unsigned char *group_checked; /* per group: 1 once its CRC was checked */
    int pinned;                   /* something in the region was handed to the interpreter
                                     (a string interned, a module loaded): never release it */
};

/* The running interpreter's singletons, by id (spec 5.4).  Process-wide, and shared by every
   interpreter: on 3.11-3.13 all of them are runtime-wide static or immortal objects (None, True,
   small ints, the empty tuple/bytes/str, the latin-1 characters and bytes). */
static PyObject *singletons[C_END];

enum { LOAD_NOT_YET, LOAD_DONE, LOAD_FAILED, LOAD_BUSY };   /* rm_image.state[i] */

/* ---- CRC-32 as zlib computes it ([CONV-5]) --------------------------------------------- *
 * Checking a module's bytes is a large part of loading it, so it is done 16 bytes at a time
 * with carry-less multiplication where the CPU has it (the folding method of Intel's paper
 * "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", constants as in zlib and
 * Chromium), else slice-by-8 tables.  tests/test_accel.py compares both with zlib.crc32. */
static uint32_t crc_tab[8][256];
static int crc_clmul = -1;        /* -1 unknown, 0 no, 1 yes */

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
    crc_clmul = 0;
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_PCLMUL) && (c & bit_SSE4_1)
        && !getenv("REFMARSHAL_NO_CLMUL"))
        crc_clmul = 1;
#endif
}

/* crc is the inverted running value; returns it still inverted. */
static uint32_t crc_tables(uint32_t crc, const unsigned char *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) { crc = crc_tab[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8); n--; }
    while (n >= 8) {            /* little-endian only, as the fingerprint guarantees here */
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = crc_tab[7][v & 0xFF] ^ crc_tab[6][(v >> 8) & 0xFF] ^ crc_tab[5][(v >> 16) & 0xFF]
            ^ crc_tab[4][(v >> 24) & 0xFF] ^ crc_tab[3][(v >> 32) & 0xFF]
            ^ crc_tab[2][(v >> 40) & 0xFF] ^ crc_tab[1][(v >> 48) & 0xFF] ^ crc_tab[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_tab[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
/* n >= 64 and a multiple of 16; crc inverted in and out, as crc_tables. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc_fold(uint32_t crc, const unsigned char *p, size_t n) {
    static const uint64_t k1k2[2] __attribute__((aligned(16))) = {0x0154442bd4, 0x01c6e41596};
    static const uint64_t k3k4[2] __attribute__((aligned(16))) = {0x01751997d0, 0x00ccaa009e};
    static const uint64_t k5k0[2] __attribute__((aligned(16))) = {0x0163cd6124, 0x0000000000};
    static const uint64_t poly[2] __attribute__((aligned(16))) = {0x01db710641, 0x01f7011641};
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;
    x1 = _mm_loadu_si128((const __m128i *)(p + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(p + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(p + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(p + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = _mm_load_si128((const __m128i *)k1k2);
    p += 64;
    n -= 64;
    while (n >= 64) {           /* four 128-bit lanes folded forward by 512 bits */
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(p + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(p + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(p + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(p + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        p += 64;
        n -= 64;
    }
    x0 = _mm_load_si128((const __m128i *)k3k4);   /* fold the four lanes into one */
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
    while (n >= 16) {           /* remaining 16-byte blocks */
        x2 = _mm_loadu_si128((const __m128i *)p);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        p += 16;
        n -= 16;
    }
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);      /* 128 -> 64 bits */
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_load_si128((const __m128i *)poly);    /* Barrett reduction to 32 bits */
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    if (crc_clmul < 0) crc_init();
    crc = ~crc;
#if defined(__x86_64__)
    if (crc_clmul && n >= 64) {
        size_t bulk = n & ~(size_t)15;
        crc = crc_fold(crc, p, bulk);
        p += bulk;
        n -= bulk;
    }
#endif
    return ~crc_tables(crc, p, n);
}

/* For the tests: the CRC this build computes, and whether it uses carry-less multiplication. */
unsigned int rm_crc32(unsigned int crc, const unsigned char *p, size_t n) {
    return crc32_update(crc, p, n);
}
int rm_crc32_uses_clmul(void) { if (crc_clmul < 0) crc_init(); return crc_clmul; }

static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

int rm_bind_list(const char *module, const char *attr, PyObject **slot) {
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *m = PyImport_ImportModule(module);
    PyObject *l = m ? PyObject_GetAttrString(m, attr) : NULL;
    Py_XDECREF(m);
    int ok = l && PyList_Check(l);
    if (ok) { Py_XSETREF(*slot, l); } else { Py_XDECREF(l); PyErr_Clear(); }
    PyGILState_Release(g);
    return ok ? 0 : -1;
}

/* ---- Bringing bytes in ------------------------------------------------------------------ */
/* Makes [off, off+len) of the file present in the region, reading whole `grain`-sized,
   `grain`-aligned pieces around it; callers have checked that the range lies inside the file.
   Runs of missing pages are read with one pread each. */
static int ensure(rm_image *img, uint64_t off, uint64_t len, uint64_t grain,
                  char *err, int errlen) {
    if (!len) return 0;
    uint64_t end = (off + len + grain - 1) / grain * grain;
    uint64_t p = off / grain * grain / PAGE_UNIT, last = ((end < img->size ? end : img->size)
                                                          - 1) / PAGE_UNIT;
    while (p <= last) {
        if (img->page_ready[p]) { p++; continue; }
        uint64_t run = p;
        while (run <= last && !img->page_ready[run]) run++;
        uint64_t from = p * PAGE_UNIT, to = run * PAGE_UNIT < img->size ? run * PAGE_UNIT
                                                                          : img->size;
#ifdef MADV_POPULATE_WRITE
        /* the pages in one call instead of one fault each as pread writes them (Linux 5.14+;
           where it fails, pread faults them in as before) */
        if (img->mode != RM_MODE_FILE_MAPPING)
            madvise(img->base + from, (run - p) * PAGE_UNIT, MADV_POPULATE_WRITE);
#endif
        while (from < to) {
            ssize_t got = pread(img->fd, img->base + from, to - from, (off_t)from);
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) {
                snprintf(err, errlen, "cannot read the image at offset %llu: %s",
                         (unsigned long long)from, got < 0 ? strerror(errno)
                         : "the file was truncated while in use");
                return -1;
            }
            from += (uint64_t)got;
            img->bytes_read += (uint64_t)got;
        }
        memset(img->page_ready + p, 1, run - p);
        p = run;
    }
    return 0;
}

/* A region of at least `size` bytes, at `want` when that is free, else anywhere; aligned to
   huge pages so the kernel can back it with them. */
static unsigned char *reserve(void *want, uint64_t size, int huge) {
    int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
    void *p = mmap(want, size, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && p != want) { munmap(p, size); p = MAP_FAILED; }  /* old kernels */
    if (p == MAP_FAILED) {
        /* anywhere: over-allocate by a huge page and trim to an aligned start */
        unsigned char *q = mmap(NULL, size + HUGE_PAGE, prot, flags, -1, 0);
        if (q == MAP_FAILED) return NULL;
        uintptr_t start = ((uintptr_t)q + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
        if (start > (uintptr_t)q) munmap(q, start - (uintptr_t)q);
        munmap((void *)(start + size), (uintptr_t)q + HUGE_PAGE - start);
        p = (void *)start;
    }
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, size, MADV_HUGEPAGE);   /* advice only: failure changes nothing */
#endif
    return p;
}

/* The word in brackets in a sysfs setting such as "always [madvise] never", or "". */
static void sysfs_choice(const char *path, char *out, size_t n) {
    char buf[128] = {0};
    out[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    char *l = got > 0 ? strchr(buf, '[') : NULL, *r = l ? strchr(l, ']') : NULL;
    if (l && r && (size_t)(r - l - 1) < n) { memcpy(out, l + 1, r - l - 1); out[r - l - 1] = 0; }
}

/* RM_MODE_AUTO's choice (rm_loader.h): with defrag "madvise" or "always" a huge-page fault in
   an madvised region compacts memory first, which stalled imports by hundreds of milliseconds
   on a busy machine (BENCHMARKS.md); "defer" and "never" fall back to small pages at once. */
int rm_huge_pages_safe(void) {
    char enabled[32], defrag[32];
    sysfs_choice("/sys/kernel/mm/transparent_hugepage/enabled", enabled, sizeof enabled);
    sysfs_choice("/sys/kernel/mm/transparent_hugepage/defrag", defrag, sizeof defrag);
    return (!strcmp(enabled, "always") || !strcmp(enabled, "madvise"))
           && (!strcmp(defrag, "defer") || !strcmp(defrag, "never"));
}

/* ---- Opening ---------------------------------------------------------------------------- */
/* 0 when the file's byte at `off` is not in the page cache (a one-byte read that must not
   wait fails with EAGAIN), 1 when it is or this cannot be told. */
static int in_page_cache(const rm_image *img, uint64_t off) {
    char probe;
    struct iovec iov = {&probe, 1};
    errno = 0;
    return preadv2(img->fd, &iov, 1, (off_t)off, RWF_NOWAIT) == 1 || errno != EAGAIN;
}

/* With the image out of the page cache (not read since boot, or evicted), lookups would read
   the directory, names and lookup sections a page at a time from the disk: the kernel is asked
   to read them all now, in the background (POSIX_FADV_WILLNEED).  Warm, this costs one
   non-blocking read of a byte. */
static void meta_read_ahead(rm_image *img, uint64_t lookup_size) {
    /* (the lookup table: not the header page's neighbours, which rm_open read) */
    if (img->mode == RM_MODE_FILE_MAPPING || in_page_cache(img, img->lookup_off)) return;
    posix_fadvise(img->fd, 0, (off_t)(img->lookup_off + lookup_size), POSIX_FADV_WILLNEED);
}


rm_image *rm_open(const char *path, int mode, char *err, int errlen) {
    rm_image *img = NULL;
    unsigned char hdr[HEADER_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) FAIL("cannot open: %s", strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) FAIL("cannot stat: %s", strerror(errno));
    if (st.st_size < HEADER_SIZE || pread(fd, hdr, HEADER_SIZE, 0) != HEADER_SIZE)
        FAIL("truncated: shorter than the header");
    if (memcmp(hdr + RM_HDR_MAGIC_OFF, RM_MAGIC, RM_MAGIC_LEN) != 0)   /* [HDR-1], first */
        FAIL("not a refmarshal image (bad magic)");
    if (rd64(hdr + RM_HDR_FILE_SIZE_OFF) != (uint64_t)st.st_size)
        FAIL("truncated or extended: header says %llu bytes, file has %lld",
             (unsigned long long)rd64(hdr + RM_HDR_FILE_SIZE_OFF), (long long)st.st_size);
    img = calloc(1, sizeof *img);
    if (!img) FAIL("out of memory");
    img->fd = fd;
    if (mode == RM_MODE_AUTO)
        mode = rm_huge_pages_safe() ? RM_MODE_HUGE_PAGES : RM_MODE_SMALL_PAGES;
    img->mode = mode;
    img->size = st.st_size;
    img->preferred = rd64(hdr + RM_HDR_PREFERRED_BASE_OFF);
    img->reserved = (img->size + HUGE_PAGE - 1) & ~(uint64_t)(HUGE_PAGE - 1);
    img->page_ready = calloc(img->size / PAGE_UNIT + 1, 1);
    if (!img->page_ready) FAIL("out of memory");
    void *want = (void *)(uintptr_t)img->preferred;
    if (mode == RM_MODE_FILE_MAPPING) {
        /* the whole file, copy-on-write: kept to compare in benchmarks/materialize.py */
        void *p = mmap(want, img->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED_NOREPLACE, fd, 0);
        if (p == MAP_FAILED || p != want) {
            if (p != MAP_FAILED) munmap(p, img->size);
            p = mmap(NULL, img->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        }
        if (p == MAP_FAILED) FAIL("cannot map: %s", strerror(errno));
        img->base = p;
        img->reserved = img->size;
        memset(img->page_ready, 1, img->size / PAGE_UNIT + 1);
    } else {
        img->base = reserve(want, img->reserved, mode == RM_MODE_HUGE_PAGES);
        if (!img->base) { img->reserved = 0; FAIL("cannot reserve memory: %s", strerror(errno)); }
    }
    /* Python checks magic, version, CRC and fingerprint on the header in the region; C keeps
       only what it needs, and checks the sections it uses lie inside the file. */
    if (ensure(img, 0, HEADER_SIZE, PAGE_UNIT, err, errlen) < 0) goto fail;
    img->nmodules = rd32(hdr + RM_HDR_MODULE_COUNT_OFF);
    img->nstrings = rd32(hdr + RM_HDR_STRING_COUNT_OFF);
#define SECTION_OFF(k) rd64(hdr + RM_HDR_SECTION_OFFSET_OFF(k))
#define SECTION_SIZE(k) rd64(hdr + RM_HDR_SECTION_SIZE_OFF(k))
    img->dir_off = SECTION_OFF(SEC_DIRECTORY);
    img->names_off = SECTION_OFF(SEC_NAMES);        img->names_size = SECTION_SIZE(SEC_NAMES);
    img->lookup_slots = rm_lookup_slots(img->nmodules);
    img->lookup_groups = rm_lookup_groups(img->lookup_slots);
    img->lookup_off = SECTION_OFF(SEC_LOOKUP);
    uint64_t lookup_size = SECTION_SIZE(SEC_LOOKUP);
    if (lookup_size != rm_lookup_size(img->nmodules)) FAIL("lookup table has a bad size");
    img->sidx_off = SECTION_OFF(SEC_STRING_INDEX);
    img->sheap_off = SECTION_OFF(SEC_STRING_HEAP);  img->sheap_size = SECTION_SIZE(SEC_STRING_HEAP);
    img->mheap_off = SECTION_OFF(SEC_MODULE_HEAP);  img->mheap_size = SECTION_SIZE(SEC_MODULE_HEAP);
#undef SECTION_OFF
#undef SECTION_SIZE
    if (img->dir_off + (uint64_t)img->nmodules * MODULE_SIZE > img->size
        || img->names_off + img->names_size > img->size
        || img->lookup_off + lookup_size > img->size
        || img->sidx_off + (uint64_t)img->nstrings * STRING_SIZE > img->size
        || img->sheap_off + img->sheap_size > img->size || img->mheap_off + img->mheap_size > img->size)
        FAIL("section outside the file");
    meta_read_ahead(img, lookup_size);
    img->group_checked = calloc(img->lookup_groups, 1);
    img->strings = calloc(img->nstrings ? img->nstrings : 1, sizeof(PyObject *));
    img->state = calloc(img->nmodules ? img->nmodules : 1, 1);
    if (!img->strings || !img->state || !img->group_checked) FAIL("out of memory");
    return img;
fail:
    if (img) rm_close(img);
    else if (fd >= 0) close(fd);
    return NULL;
}

/* The memory stays: code objects loaded from it live there until the process ends. */
void rm_close(rm_image *img) {
    if (!img) return;
    if (img->pinned) return;      /* its objects live until the process ends ([LOAD-4]) */
    if (img->base && img->reserved) munmap(img->base, img->reserved);
    if (img->fd >= 0) close(img->fd);
    free(img->page_ready); free(img->strings); free(img->state); free(img->group_checked);
    free(img);
}

const unsigned char *rm_base(rm_image *img) { return img->base; }
unsigned long long rm_size(rm_image *img) { return img->size; }
int rm_relocated(rm_image *img) { return (uint64_t)(uintptr_t)img->base != img->preferred; }
unsigned int rm_module_count(rm_image *img) { return img->nmodules; }
unsigned long long rm_bytes_read(rm_image *img) { return img->bytes_read; }

/* ---- Directory ([DIR-1], [LKP-2]) -------------------------------------------------------- */
/* Entry i's name, bounds-checked (not yet checksummed): for binary search.  `want`: the length
   the caller looks for, or 0: a name of another length is not read (*len set, NULL, no
   error), so that a lookup's probe past other modules reads their entries' page only. */
static const unsigned char *entry_name(rm_image *img, uint32_t i, uint32_t *len, size_t want,
                                       char *err, int errlen) {
    uint64_t e_off = img->dir_off + (uint64_t)i * MODULE_SIZE;
    if (ensure(img, e_off, MODULE_SIZE, PAGE_UNIT, err, errlen) < 0) return NULL;
    const unsigned char *e = img->base + e_off;
    uint32_t n_off = rd32(e + RM_DIR_NAME_OFFSET_OFF), n_len = rd32(e + RM_DIR_NAME_LENGTH_OFF);
    *len = n_len;
    if (want && n_len != want) return NULL;
    if ((uint64_t)n_off + n_len > img->names_size) {
        snprintf(err, errlen, "directory entry %u: name outside the names section", i);
        return NULL;
    }
    if (ensure(img, img->names_off + n_off, n_len, PAGE_UNIT, err, errlen) < 0)
        return NULL;
    *len = n_len;
    return img->base + img->names_off + n_off;
}

/* Entry i, fully checked ([DIR-1]): its fields into *out.  Called with the GIL held. */
int rm__check_entry(rm_image *img, uint32_t i, rm_entry_info *out, char *err, int errlen) {
    int rc = -1;
    uint32_t n_len;
    if (i >= img->nmodules) FAIL("no directory entry %u", i);
    const unsigned char *name = entry_name(img, i, &n_len, 0, err, errlen);
    if (!name) goto fail;
    const unsigned char *e = img->base + img->dir_off + (uint64_t)i * MODULE_SIZE;
    uint32_t p_off = rd32(e + RM_DIR_PATH_OFFSET_OFF), p_len = rd32(e + RM_DIR_PATH_LENGTH_OFF);
    uint32_t flags = rd32(e + RM_DIR_FLAGS_OFF);
    if ((uint64_t)p_off + p_len > img->names_size)
        FAIL("directory entry %u: name or path outside the names section", i);
    if (ensure(img, img->names_off + p_off, p_len, PAGE_UNIT, err, errlen) < 0) goto fail;
    const unsigned char *path = img->base + img->names_off + p_off;
    uint32_t crc = crc32_update(0, e + RM_DIR_FLAGS_OFF, RM_DIR_BYTES - RM_DIR_FLAGS_OFF);
    crc = crc32_update(crc32_update(crc, name, n_len), path, p_len);
    if (crc != rd32(e + RM_DIR_ENTRY_CRC_OFF)) FAIL("directory entry %u: checksum mismatch", i);
    if (rd32(e + RM_DIR_RESERVED_OFF) != 0)
        FAIL("directory entry %u: reserved bytes are not zero", i);
    if (flags & ~(uint32_t)MOD_FLAGS)
        FAIL("directory entry %u: reserved flags set", i);
    int64_t dir_ns = (int64_t)rd64(e + RM_DIR_DIR_MTIME_NS_OFF);
    int64_t pkg_ns = (int64_t)rd64(e + RM_DIR_PKG_MTIME_NS_OFF);
    if ((pkg_ns && !(flags & MOD_PACKAGE))
        || ((flags & MOD_FIRST_IN_DIR) && (!dir_ns || (!pkg_ns && (flags & MOD_PACKAGE)))))
        FAIL("directory entry %u: directory stamps do not fit its flags ([DIR-6])", i);
    out->flags = flags;
    out->name = (const char *)name;  out->name_len = n_len;
    out->path = (const char *)path;  out->path_len = p_len;
    out->mtime_ns = (long long)rd64(e + RM_DIR_SOURCE_MTIME_NS_OFF);
    out->size = rd64(e + RM_DIR_SOURCE_SIZE_OFF);
    out->seg_off = rd64(e + RM_DIR_SEGMENT_OFFSET_OFF);
    out->seg_size = rd32(e + RM_DIR_SEGMENT_SIZE_OFF);
    out->root = rd32(e + RM_DIR_ROOT_OFFSET_OFF);
    out->data_crc = rd32(e + RM_DIR_DATA_CRC_OFF);
    out->dir_mtime_ns = dir_ns;
    out->pkg_mtime_ns = pkg_ns;
    rc = 0;
fail:
    return rc;
}

int rm_entry(rm_image *img, unsigned int i, rm_entry_info *out, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();   /* chunks are read under the GIL */
    int rc = rm__check_entry(img, i, out, err, errlen);
    PyGILState_Release(g);
    return rc;
}

/* A search in the lookup table ([LKP-2]): from the slot the name's CRC-32 picks, on to the
   first empty one.  Returns the entry's index, -1 when the image has no such module, -2 on a
   malformed image (message in err).  GIL held. */
/* Group g of the lookup table read in and its CRC checked, once ([LKP-1]). */
static int lookup_group(rm_image *img, uint64_t g, char *err, int errlen) {
    uint64_t crcs = img->lookup_off + RM_LOOKUPHEAD_BYTES;
    uint64_t slots = crcs + 4 * img->lookup_groups;
    uint64_t first = g * LOOKUP_GROUP, n = img->lookup_slots - first;
    if (n > LOOKUP_GROUP) n = LOOKUP_GROUP;
    if (ensure(img, img->lookup_off, RM_LOOKUPHEAD_BYTES + 4 * img->lookup_groups, PAGE_UNIT,
               err, errlen) < 0
        || ensure(img, slots + first * RM_LOOKUP_BYTES, n * RM_LOOKUP_BYTES, PAGE_UNIT,
                  err, errlen) < 0)
        return -1;
    const unsigned char *head = img->base + img->lookup_off;
    if (rd32(head + RM_LOOKUPHEAD_SLOTS_OFF) != img->lookup_slots
        || rd32(head + RM_LOOKUPHEAD_GROUPS_OFF) != img->lookup_groups
        || crc32_update(0, img->base + slots + first * RM_LOOKUP_BYTES, n * RM_LOOKUP_BYTES)
           != rd32(img->base + crcs + 4 * g)) {
        snprintf(err, errlen, "lookup table checksum mismatch");
        return -1;
    }
    img->group_checked[g] = 1;
    return 0;
}

int rm__find(rm_image *img, const char *name, size_t len, char *err, int errlen) {
    uint64_t mask = img->lookup_slots - 1;
    uint64_t slots = img->lookup_off + RM_LOOKUPHEAD_BYTES + 4 * img->lookup_groups;
    uint64_t at = crc32_update(0, (const unsigned char *)name, len) & mask;
    for (uint64_t probes = 0; probes <= mask; probes++, at = (at + 1) & mask) {
        if (!img->group_checked[at / LOOKUP_GROUP]
            && lookup_group(img, at / LOOKUP_GROUP, err, errlen) < 0)
            return -2;
        uint32_t v = rd32(img->base + slots + at * RM_LOOKUP_BYTES), n_len;
        if (!v) return -1;
        if (v > img->nmodules) {
            snprintf(err, errlen, "lookup slot %llu: no directory entry %u",
                     (unsigned long long)at, v - 1);
            return -2;
        }
        err[0] = 0;
        const unsigned char *n = entry_name(img, v - 1, &n_len, len, err, errlen);
        if (!n && (err[0] || !len)) return -2;
        if (n && memcmp(n, name, len) == 0) return (int)(v - 1);
    }
    snprintf(err, errlen, "lookup table has no empty slot");
    return -2;
}

int rm_find(rm_image *img, const char *name, size_t len, char *err, int errlen) {
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = rm__find(img, name, len, err, errlen);
    PyGILState_Release(g);
    return rc;
}

/* ---- Singletons (spec 5.4) ------------------------------------------------------------- */
static int init_singletons(void) {
    if (singletons[0]) return 0;
    PyObject *s[C_END] = {0};
    s[C_NONE] = Py_None; s[C_TRUE] = Py_True; s[C_FALSE] = Py_False;
    s[C_ELLIPSIS] = Py_Ellipsis;
    s[C_EMPTY_TUPLE] = PyTuple_New(0);
    s[C_EMPTY_BYTES] = PyBytes_FromStringAndSize(NULL, 0);
    s[C_EMPTY_STR] = PyUnicode_New(0, 0);
    for (int n = SMALL_INT_MIN; n <= SMALL_INT_MAX; n++)
        s[C_SMALL_INT + n - SMALL_INT_MIN] = PyLong_FromLong(n);
    for (int c = 0; c < 256; c++) {
        char b = (char)c;
        s[C_LATIN1 + c] = PyUnicode_FromOrdinal(c);
        s[C_BYTE + c] = PyBytes_FromStringAndSize(&b, 1);
    }
    for (int i = 0; i < C_END; i++) {
        int defined = i < C_FIXED_END || i >= C_LATIN1
                      || (i >= C_SMALL_INT && i <= C_SMALL_INT + SMALL_INT_MAX - SMALL_INT_MIN);
        if (defined && !s[i]) { PyErr_Clear(); return -1; }
    }
    memcpy(singletons, s, sizeof s);   /* the table holds one reference to each, forever */
    return 0;
}

/* ---- Strings (spec 4, [LOAD-2]) ------------------------------------------------------- */
/* A str of the image, interned: the interpreter's equal interned string where it has one.  An
   interned one-character str ([OBJ-5]) is interned as marshal does it: the latin-1 singleton
   is interned (or the interpreter's interned copy used), not the image's object. */
static PyObject *intern_str(PyObject *s) {
    if (PyUnicode_GET_LENGTH(s) == 1 && PyUnicode_READ_CHAR(s, 0) < 256)
        s = singletons[C_LATIN1 + PyUnicode_READ_CHAR(s, 0)];
    PyUnicode_InternInPlace(&s);
    return s;
}

static PyObject *resolve_string(rm_image *img, uint64_t index, char *err, int errlen) {
    if (img->strings[index]) return img->strings[index];
    uint64_t e_off = img->sidx_off + index * STRING_SIZE;
    if (ensure(img, e_off, STRING_SIZE, PAGE_UNIT, err, errlen) < 0) return NULL;
    const unsigned char *e = img->base + e_off;
    uint32_t off = rd32(e + RM_STRIDX_OFFSET_OFF), size = rd32(e + RM_STRIDX_SIZE_OFF);
    uint32_t flags = rd32(e + RM_STRIDX_FLAGS_OFF), crc = rd32(e + RM_STRIDX_CRC_OFF);
    if ((uint64_t)off + size > img->sheap_size || off % RM_ALIGN || size < 48
        || flags != STR_INTERNED) {   /* [STR-3] the table holds interned strings only */
        snprintf(err, errlen, "string %llu: bad index entry", (unsigned long long)index);
        return NULL;
    }
    if (ensure(img, img->sheap_off + off, size, PAGE_UNIT, err, errlen) < 0) return NULL;
    unsigned char *obj = img->base + img->sheap_off + off;
    if (crc32_update(crc32_update(0, e, RM_STRIDX_CRC_OFF), obj, size) != crc
        || rd64(obj + 8) != T_STR) {   /* the type word, as stored ([OBJ-4]) */
        snprintf(err, errlen, "string %llu: checksum mismatch", (unsigned long long)index);
        return NULL;
    }
    PyObject *s = (PyObject *)obj;
    img->pinned = 1;
    Py_SET_TYPE(s, &PyUnicode_Type);
    s = intern_str(s);
    img->strings[index] = s;
    return s;
}
/* ---- Code objects: what init_code() does beyond the stored fields ([LOAD-3]) ------------ */
#if RM_CODE_VERSION == 2
#include "internal/pycore_runtime.h"
/* 3.12 numbers code objects from a counter that libpython does not export
   (_Py_next_func_version).  Drawing a number by creating an empty code object costs about
   0.2 us, a few ms for a large package, so after DRAWS_BEFORE_SEARCH draws the counter is
   looked for once: in the writable memory of the object holding _PyRuntime (the same
   library), the words equal to the next number; drawing again must move exactly one of them
   in step, three times over.  Otherwise the slow way stays. */
#define DRAWS_BEFORE_SEARCH 400
static uint32_t *code_counter;    /* found: the counter itself */
static long code_draws;           /* versions drawn the slow way so far; -1: search failed */

static int draw_version(uint32_t *v) {
    PyCodeObject *probe = PyCode_NewEmpty("", "", 0);
    if (!probe) return -1;
    *v = probe->co_version;       /* a version no other code object has */
    Py_DECREF(probe);
    return 0;
}

typedef struct { uintptr_t lo, hi; } rw_range;

static int find_rw(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    rw_range *r = data;
    uintptr_t want = (uintptr_t)&_PyRuntime;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && lo <= want && want < hi) {
            r->lo = lo; r->hi = hi;
            return 1;
        }
    }
    return 0;
}

static void find_counter(void) {
    enum { MAX_CANDIDATES = 64 };
    uint32_t *cand[MAX_CANDIDATES], v;
    int n = 0;
    rw_range r = {0, 0};
    code_draws = -1;              /* unless found below */
    if (!dl_iterate_phdr(find_rw, &r) || draw_version(&v) < 0) { PyErr_Clear(); return; }
    for (uint32_t *p = (uint32_t *)((r.lo + 3) & ~(uintptr_t)3); (uintptr_t)(p + 1) <= r.hi; p++)
        if (*p == v + 1) {
            if (n == MAX_CANDIDATES) return;
            cand[n++] = p;
        }
    for (int round = 0; round < 3 && n; round++) {
        if (draw_version(&v) < 0) { PyErr_Clear(); return; }
        int kept = 0;
        for (int i = 0; i < n; i++)
            if (*cand[i] == v + 1) cand[kept++] = cand[i];
        n = kept;
    }
    if (n == 1) code_counter = cand[0];
}
#endif

static int init_code_object(PyCodeObject *co) {
#if RM_CODE_VERSION == 1
    PyInterpreterState *interp = PyInterpreterState_Get();
    co->co_version = interp->func_state.next_version;
    if (interp->func_state.next_version != 0) interp->func_state.next_version++;
#elif RM_CODE_VERSION == 2
    if (!code_counter && code_draws >= DRAWS_BEFORE_SEARCH) find_counter();
    if (code_counter) {           /* as init_code() does it */
        co->co_version = *code_counter;
        if (*code_counter != 0) (*code_counter)++;
    } else {
        uint32_t v;
        if (draw_version(&v) < 0) return -1;
        co->co_version = v;
        if (code_draws >= 0) code_draws++;
    }
#endif
#if RM_CODE_WATCHERS
    PyInterpreterState *wi = PyInterpreterState_Get();
    uint8_t bits = wi->active_code_watchers;
    for (int i = 0; bits; i++, bits >>= 1) {
        if ((bits & 1) && wi->code_watchers[i] && wi->code_watchers[i](PY_CODE_EVENT_CREATE, co) < 0)
            PyErr_WriteUnraisable((PyObject *)co);   /* as notify_code_watchers() does */
    }
#endif
    return 0;
}

/* ---- Loading one module ([LOAD-1]) ------------------------------------------------------ */
/* Where a load keeps the objects it must visit again once every word is fixed up: frozensets
   need their tuple's items, code objects their fields. */
typedef struct {
    PyObject ***at;
    size_t n, cap;
    PyObject **inline_at[64];
} slot_list;

static int slot_push(slot_list *l, PyObject **w) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        PyObject ***a = l->at == l->inline_at ? malloc(cap * sizeof *a)
                                              : realloc(l->at, cap * sizeof *a);
        if (!a) return -1;
        if (l->at == l->inline_at) memcpy(a, l->inline_at, l->n * sizeof *a);
        l->at = a;
        l->cap = cap;
    }
    l->at[l->n++] = w;
    return 0;
}

static void slot_free(slot_list *l) { if (l->at != l->inline_at) free(l->at); }

/* One module being loaded: its checked directory entry and where its bytes are. */
typedef struct {
    rm_image *img;
    rm_entry_info info;
    unsigned char *seg;           /* the segment, in the region */
    const uint64_t *bitmap;       /* the bitmap after it ([SEG-2]) */
    uint64_t bitmap_words;
    slot_list codes, frozensets;  /* TYPE words of code objects; FROZENSET words */
    slot_list lstrs;              /* LSTR words: resolved once every type word is written */
} module_load;

/* The block (segment and bitmap) inside the module heap, read in, and its checksum. */
static int bring_in(module_load *m, char *err, int errlen) {
    int rc = -1;
    rm_image *img = m->img;
    const rm_entry_info *e = &m->info;
    m->bitmap_words = rm_bitmap_bytes(e->seg_size) / 8;
    uint64_t block = (uint64_t)e->seg_size + rm_bitmap_bytes(e->seg_size);
    if (e->seg_off < img->mheap_off || e->seg_off + block > img->mheap_off + img->mheap_size
        || e->seg_off % 8 || e->seg_size % 8 || e->root >= e->seg_size || e->root % 8)
        FAIL("directory entry out of bounds");
    if (ensure(img, e->seg_off, block, PAGE_UNIT, err, errlen) < 0) goto fail;
    m->bitmap = (const uint64_t *)(m->seg + e->seg_size);
    if (crc32_update(0, m->seg, block) != e->data_crc) FAIL("segment checksum mismatch");
    rc = 0;
fail:
    return rc;
}

/* The one pass over the module's tagged words ([SEG-3]): each is checked and replaced by what
   it names.  A bad word fails the load, leaving the module half written: it is LOAD_FAILED and
   never handed out.  Strings are resolved (checked, interned) as they are met. */
static int fix_up(module_load *m, char *err, int errlen) {
    static PyTypeObject *types[T_CODE + 1];
    if (!types[T_STR]) {
        types[T_STR] = &PyUnicode_Type; types[T_BYTES] = &PyBytes_Type;
        types[T_TUPLE] = &PyTuple_Type; types[T_INT] = &PyLong_Type;
        types[T_FLOAT] = &PyFloat_Type; types[T_COMPLEX] = &PyComplex_Type;
        types[T_CODE] = &PyCode_Type;
    }
    rm_image *img = m->img;
    uint64_t lo = img->preferred + m->info.seg_off, hi = lo + m->info.seg_size;
    uint64_t delta = (uint64_t)(uintptr_t)img->base - img->preferred;
    uint64_t nwords = m->info.seg_size / 8;
    for (uint64_t b = 0; b < m->bitmap_words; b++) {
        uint64_t bits = m->bitmap[b];
        while (bits) {
            uint64_t slot = b * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (slot >= nwords) FAIL("bitmap bit %llu is beyond the segment",
                                     (unsigned long long)slot);
            uint64_t *w = (uint64_t *)(m->seg + slot * 8), v = *w, x = v >> TAG_BITS;
            switch (v & TAG_MASK) {
            case R_PTR:
                if (v < lo || v >= hi) FAIL("word %llu: pointer outside the segment",
                                            (unsigned long long)slot);
                *w = v + delta;
                break;
            case R_TYPE:
                if (x < T_STR || x > T_CODE) FAIL("word %llu: bad type code",
                                                  (unsigned long long)slot);
                *w = (uint64_t)(uintptr_t)types[x];
                if (x == T_CODE && slot_push(&m->codes, (PyObject **)w) < 0)
                    FAIL("out of memory");
                break;
            case R_CONST:
                if (x >= C_END || (x >= C_FIXED_END && x < C_SMALL_INT)
                    || (x > C_SMALL_INT + SMALL_INT_MAX - SMALL_INT_MIN && x < C_LATIN1))
                    FAIL("word %llu: bad singleton id", (unsigned long long)slot);
                *w = (uint64_t)(uintptr_t)singletons[x];
                break;
            case R_STR: {
                if (x >= img->nstrings) FAIL("word %llu: bad string index",
                                             (unsigned long long)slot);
                PyObject *str = resolve_string(img, x, err, errlen);
                if (!str) goto fail;
                *w = (uint64_t)(uintptr_t)str;
                break;
            }
            case R_FROZENSET:
                v &= ~(uint64_t)TAG_MASK;
                if (v < lo || v >= hi) FAIL("word %llu: frozenset outside the segment",
                                            (unsigned long long)slot);
                *w = v + delta;    /* the tuple, for now: build_frozensets replaces it */
                if (slot_push(&m->frozensets, (PyObject **)w) < 0) FAIL("out of memory");
                break;
            case R_LSTR:
                v &= ~(uint64_t)TAG_MASK;
                if (v < lo || v + 48 > hi) FAIL("word %llu: string outside the segment",
                                                (unsigned long long)slot);
                *w = v + delta;
                if (slot_push(&m->lstrs, (PyObject **)w) < 0) FAIL("out of memory");
                break;
            default:
                FAIL("word %llu: unknown tag", (unsigned long long)slot);
            }
        }
    }
    return 0;
fail:
    return -1;
}

/* [SEG-5] The interned strings of the module's own: each LSTR word gets the interned string
   (the image's object, or the interpreter's equal one). */
static int resolve_local_strings(module_load *m, char *err, int errlen) {
    int rc = -1;
    for (size_t i = 0; i < m->lstrs.n; i++) {
        PyObject **w = m->lstrs.at[i];
        if (!PyUnicode_CheckExact(*w) || !PyUnicode_IS_COMPACT(*w))
            FAIL("an LSTR word does not point at a string");
        *w = intern_str(*w);
    }
    rc = 0;
fail:
    return rc;
}

/* Frozensets ([OBJ-9]): built from their (now fixed-up) tuples, owned by the image forever.
   Words that point at one tuple get one frozenset, as marshal shares one object between
   references (a module has a handful of frozensets: a linear search is enough). */
static int build_frozensets(module_load *m, char *err, int errlen) {
    int rc = -1;
    size_t n = m->frozensets.n;
    PyObject **tuples = n ? malloc(n * sizeof *tuples) : NULL;
    if (n && !tuples) FAIL("out of memory");
    for (size_t i = 0; i < n; i++) {
        PyObject **w = m->frozensets.at[i], *fs = NULL;
        tuples[i] = *w;
        for (size_t j = 0; j < i && !fs; j++)
            if (tuples[j] == tuples[i]) fs = *m->frozensets.at[j];
        if (!fs) {
            if (!PyTuple_CheckExact(tuples[i])) FAIL("a frozenset's items are not a tuple");
            if (!(fs = PyFrozenSet_New(tuples[i]))) {
                PyErr_Clear();
                FAIL("cannot build a frozenset");
            }
        }
        *w = fs;
    }
    rc = 0;
fail:
    free(tuples);
    return rc;
}

/* What creating each code object does beyond its stored fields ([LOAD-3]). */
static int init_code_objects(module_load *m, char *err, int errlen) {
    int rc = -1;
    for (size_t i = 0; i < m->codes.n; i++) {
        PyObject *o = (PyObject *)((unsigned char *)m->codes.at[i] - offsetof(PyObject, ob_type));
        if (init_code_object((PyCodeObject *)o) < 0) {
            PyErr_Clear();
            FAIL("cannot initialise a code object");
        }
    }
    rc = 0;
fail:
    return rc;
}

/* Module `index`'s root code object (a borrowed reference: the image owns it forever), or NULL
   with the reason in err.  GIL held, and only the GIL: nothing here releases it on purpose, but a
   garbage collection or a code watcher can run Python code (and so switch threads) while a module
   is half fixed up; such a module is LOAD_BUSY, and another request for it fails instead of
   touching it (the import system's module locks make that rare: only direct Image.get_code calls
   can meet it).  A module that fails is LOAD_FAILED from then on: it may be half written. */
/* ---- Read-ahead for a cold start ([DIR-4]) ------------------------------------------------ *
 * A top-level package's modules, tests left out, lie together in the module heap, and a
 * program that imports the package usually imports many of them.  At the package's first
 * load, when its block is not in the page cache (a cold start: a read that must not wait
 * fails), the kernel is asked to read that whole range now (POSIX_FADV_WILLNEED, asynchronous):
 * the blocks then come in one stream while the first modules run, instead of one random read
 * each.  Warm, it costs one failed-or-not read of a byte. */

/* [DIR-4]: a name component after the first is test or tests or starts with test_. */
static int is_test_name(const char *n, uint32_t len) {
    const char *end = n + len, *c = memchr(n, '.', len);
    while (c) {
        const char *s = c + 1, *e = memchr(s, '.', (size_t)(end - s));
        size_t k = (size_t)((e ? e : end) - s);
        if ((k == 4 && !memcmp(s, "test", 4)) || (k == 5 && !memcmp(s, "tests", 5))
            || (k >= 5 && !memcmp(s, "test_", 5)))
            return 1;
        c = e;
    }
    return 0;
}

/* 1 when entry i's name is below the package `info` names (its name + "." + more). */
static int in_subtree(rm_image *img, uint32_t i, const rm_entry_info *info, char *err,
                      int errlen) {
    uint32_t len;
    const unsigned char *n = entry_name(img, i, &len, 0, err, errlen);
    if (!n) return -1;
    return len > info->name_len && memcmp(n, info->name, info->name_len) == 0
           && n[info->name_len] == '.';
}

#define AHEAD_SCAN 64                     /* test modules stepped over to find the range's end */
#define AHEAD_MAX (64ULL * 1024 * 1024)   /* bytes advised at most */

static void read_ahead(rm_image *img, uint32_t index, const rm_entry_info *info) {
    if (!(info->flags & MOD_PACKAGE) || memchr(info->name, '.', info->name_len)
        || in_page_cache(img, info->seg_off))
        return;                           /* warm (or no such test) */
    /* the subtree's entries follow the package's, sorted ([DIR-2]): find the first entry
       past them (names >= name + "/"), exponentially then by halves */
    char err[64];
    uint32_t lo = index, hi = index + 1, step = 1;
    int below;
    while (hi < img->nmodules && (below = in_subtree(img, hi, info, err, sizeof err)) != 0) {
        if (below < 0) return;
        lo = hi;
        hi = hi + step > img->nmodules ? img->nmodules : hi + step;
        step *= 2;
    }
    while (hi - lo > 1) {                 /* lo in the subtree, hi past it */
        uint32_t mid = lo + (hi - lo) / 2;
        if ((below = in_subtree(img, mid, info, err, sizeof err)) < 0) return;
        if (below) lo = mid;
        else hi = mid;
    }
    uint64_t end = img->mheap_off + img->mheap_size;
    for (uint32_t i = hi, k = 0; i < img->nmodules; i++, k++) {   /* the next non-test block */
        rm_entry_info next;
        if (k == AHEAD_SCAN || rm__check_entry(img, i, &next, err, (int)sizeof err) < 0) return;
        if (!is_test_name(next.name, next.name_len)) { end = next.seg_off; break; }
    }
    if (end <= info->seg_off) return;
    uint64_t n = end - info->seg_off;
    posix_fadvise(img->fd, (off_t)info->seg_off, (off_t)(n < AHEAD_MAX ? n : AHEAD_MAX),
                  POSIX_FADV_WILLNEED);
}

PyObject *rm__load(rm_image *img, uint32_t index, char *err, int errlen) {
    module_load m = {.img = img};
    m.codes.at = m.codes.inline_at;
    m.codes.cap = sizeof m.codes.inline_at / sizeof m.codes.inline_at[0];
    m.frozensets.at = m.frozensets.inline_at;
    m.frozensets.cap = m.codes.cap;
    m.lstrs.at = m.lstrs.inline_at;
    m.lstrs.cap = m.codes.cap;
    if (index >= img->nmodules) FAIL("no module %u", index);
    if (img->state[index] == LOAD_FAILED) FAIL("module failed to load before");
    if (img->state[index] == LOAD_BUSY) {   /* someone else's: leave its state alone */
        snprintf(err, errlen, "module is being loaded by another thread");
        return NULL;
    }
    if (rm__check_entry(img, index, &m.info, err, errlen) < 0) goto fail;
    m.seg = img->base + m.info.seg_off;
    PyObject *root = (PyObject *)(m.seg + m.info.root);
    if (img->state[index] == LOAD_DONE) return root;
    img->state[index] = LOAD_BUSY;
    read_ahead(img, index, &m.info);
    if (bring_in(&m, err, errlen) < 0) goto fail;
    if (init_singletons() < 0) FAIL("accelerator not initialised");
    img->pinned = 1;              /* from here on the region holds objects Python may see */
    if (fix_up(&m, err, errlen) < 0 || resolve_local_strings(&m, err, errlen) < 0
        || build_frozensets(&m, err, errlen) < 0)
        goto fail;
    if (Py_TYPE(root) != &PyCode_Type) FAIL("root is not a code object");
    if (init_code_objects(&m, err, errlen) < 0) goto fail;
    img->state[index] = LOAD_DONE;
    slot_free(&m.codes);
    slot_free(&m.frozensets);
    slot_free(&m.lstrs);
    return root;
fail:
    if (index < img->nmodules && img->state[index] != LOAD_DONE)
        img->state[index] = LOAD_FAILED;
    slot_free(&m.codes);
    slot_free(&m.frozensets);
    slot_free(&m.lstrs);
    return NULL;
}

/* For the tests: a code object's co_version (0 where there is none, 3.11), and whether 3.12's
   hidden counter was found (1), not looked for yet (0) or not found (-1). */
unsigned int rm_code_version(void *code) {
#if RM_CODE_VERSION
    return ((PyCodeObject *)code)->co_version;
#else
    (void)code;
    return 0;
#endif
}
int rm_code_counter_found(void) {
#if RM_CODE_VERSION == 2
    return code_counter ? 1 : code_draws < 0 ? -1 : 0;
#else
    return 0;
#endif
}

/* The interpreter version this file was compiled for: Python refuses a mismatched build. */
unsigned long rm_python_version(void) { return PY_VERSION_HEX; }

/* Counts the heap allocations of the process it is preloaded into, for
 * bench/registry.py --work: a load-independent measure of the work a
 * request costs (wall time and CPU time on a shared machine move with
 * other jobs; the number of allocations per request does not).
 *
 *   BPFARM_ALLOC_COUNT=<file> LD_PRELOAD=<this .so> <program>
 *
 * <file> holds three native 64-bit counters, updated as the program runs:
 * allocation calls (malloc, calloc, realloc, memalign, aligned_alloc,
 * posix_memalign), bytes asked for, and free calls. The bench reads it
 * before and after a load run. Each call goes straight on to glibc's own
 * allocator (its __libc_* entry points, so nothing here allocates or
 * recurses); the counting is one relaxed atomic add per call, so run
 * timing measurements without it. Without BPFARM_ALLOC_COUNT it counts
 * nothing. Built by the bench with the system C compiler.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static uint64_t *counts;

__attribute__((constructor)) static void alloc_count_init(void) {
    const char *path = getenv("BPFARM_ALLOC_COUNT");
    if (!path || !*path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (ftruncate(fd, 4096) == 0) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED)
            counts = p;
    }
    close(fd);
}

static inline void note(size_t bytes) {
    if (counts) {
        __atomic_fetch_add(&counts[0], 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&counts[1], bytes, __ATOMIC_RELAXED);
    }
}

void *malloc(size_t n) {
    note(n);
    return __libc_malloc(n);
}

void *calloc(size_t k, size_t n) {
    note(k * n);
    return __libc_calloc(k, n);
}

void *realloc(void *p, size_t n) {
    note(n);
    return __libc_realloc(p, n);
}

void free(void *p) {
    if (p && counts)
        __atomic_fetch_add(&counts[2], 1, __ATOMIC_RELAXED);
    __libc_free(p);
}

void *memalign(size_t align, size_t n) {
    note(n);
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n) {
    note(n);
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1)) != 0)
        return EINVAL;
    note(n);
    void *p = __libc_memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

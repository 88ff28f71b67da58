/*
 * alloc_shim: an LD_PRELOAD library that fails the Nth allocation of a
 * program and counts the blocks it leaves live, for the allocation-failure
 * sweep of tests/e2e/test_faults.py (SQLite's countdown, reliability.md
 * §1, §4.3). Built by that test with gcc -shared -fPIC; not part of any
 * Makefile target.
 *
 * Environment:
 *   FAULT_ALLOC_N=N        fail the Nth counted call (1-based); 0 or unset:
 *                          never fail (a clean run, to measure the count)
 *   FAULT_ALLOC_PERSIST=1  fail the Nth call and every one after it
 *   FAULT_ALLOC_REPORT=F   at exit, write one line to F:
 *     calls=C fired=F live_blocks=B live_maps=M failed_kind=K
 *   C: counted calls; F: calls that were failed; B: heap blocks allocated
 *   and not freed (whole process, start-up included); M: anonymous mmap
 *   regions mapped through mmap() by the program and not unmapped; K: the
 *   kind of the first failed call (malloc, calloc, realloc, memalign,
 *   mmap, mremap) or "-".
 *
 * What is counted: malloc, calloc, realloc (growing or moving a block;
 * realloc(p, 0) is a free), reallocarray, posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc, mmap of private anonymous memory without
 * MAP_FIXED, and mremap. Counting starts when main is entered (the
 * __libc_start_main wrapper below): the dynamic loader's and library
 * constructors' allocations are neither counted nor failed, since a
 * failure there is the library's business, not the program's. glibc's
 * own calls to malloc from inside libc (stdio buffers, strdup, getline,
 * fopen) go through these symbols, so they are counted and can fail, as
 * they would in a real shortage.
 *
 * The real allocator is glibc's, reached through its exported __libc_*
 * entry points (no dlsym, which itself allocates); mmap, munmap and
 * mremap go to the kernel by syscall(2).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t size);

static atomic_long fault_n;        /* 0: never */
static atomic_bool fault_persist;
static atomic_bool armed;          /* set when main is entered */
static atomic_long calls;          /* counted calls since armed */
static atomic_long fired;          /* calls failed */
static atomic_long live_blocks;    /* heap blocks live, whole process */
static _Atomic(const char *) first_kind;

/* Anonymous mappings made through mmap(): start and length, so munmap of
 * a whole region is recognised. A small table under a spin lock: the
 * programs under test make a handful. Regions past its size are counted
 * but not tracked (and so never subtracted: a leak would be reported). */
#define MAPS_MAX 4096
static struct {
	uintptr_t addr;
	size_t len;
} maps[MAPS_MAX];
static atomic_flag maps_lock = ATOMIC_FLAG_INIT;
static atomic_long live_maps;

static long env_long(const char *name)
{
	const char *s = getenv(name);
	return s != NULL ? strtol(s, NULL, 10) : 0;
}

__attribute__((constructor)) static void shim_init(void)
{
	atomic_store(&fault_n, env_long("FAULT_ALLOC_N"));
	atomic_store(&fault_persist, env_long("FAULT_ALLOC_PERSIST") != 0);
}

/* True if this counted call must fail (and counts it as fired). */
static int shim_fail(const char *kind)
{
	if (!atomic_load_explicit(&armed, memory_order_relaxed))
		return 0;
	long n = atomic_fetch_add(&calls, 1) + 1;
	long at = atomic_load_explicit(&fault_n, memory_order_relaxed);
	if (at <= 0)
		return 0;
	if (n == at || (n > at && atomic_load(&fault_persist))) {
		const char *none = NULL;
		atomic_compare_exchange_strong(&first_kind, &none, kind);
		atomic_fetch_add(&fired, 1);
		errno = ENOMEM;
		return 1;
	}
	return 0;
}

/* ---- the heap ---- */

void *malloc(size_t size)
{
	if (shim_fail("malloc"))
		return NULL;
	void *p = __libc_malloc(size);
	if (p != NULL)
		atomic_fetch_add(&live_blocks, 1);
	return p;
}

void *calloc(size_t n, size_t size)
{
	if (shim_fail("calloc"))
		return NULL;
	void *p = __libc_calloc(n, size);
	if (p != NULL)
		atomic_fetch_add(&live_blocks, 1);
	return p;
}

void free(void *p)
{
	if (p == NULL)
		return;
	atomic_fetch_sub(&live_blocks, 1);
	__libc_free(p);
}

void *realloc(void *p, size_t size)
{
	if (p == NULL)
		return malloc(size);
	if (size == 0) { /* glibc frees p and returns NULL */
		free(p);
		return NULL;
	}
	if (shim_fail("realloc"))
		return NULL; /* p stays valid, as on a real failure */
	return __libc_realloc(p, size);
}

void *reallocarray(void *p, size_t n, size_t size)
{
	size_t bytes;
	if (__builtin_mul_overflow(n, size, &bytes)) {
		errno = ENOMEM;
		return NULL;
	}
	return realloc(p, bytes);
}

static void *shim_memalign(size_t align, size_t size)
{
	if (shim_fail("memalign"))
		return NULL;
	void *p = __libc_memalign(align, size);
	if (p != NULL)
		atomic_fetch_add(&live_blocks, 1);
	return p;
}

int posix_memalign(void **out, size_t align, size_t size)
{
	if (align < sizeof(void *) || (align & (align - 1)) != 0)
		return EINVAL;
	int saved = errno;
	void *p = shim_memalign(align, size);
	if (p == NULL) {
		errno = saved; /* posix_memalign returns, never sets, errno */
		return ENOMEM;
	}
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t size)
{
	if (align == 0 || (align & (align - 1)) != 0) {
		errno = EINVAL;
		return NULL;
	}
	return shim_memalign(align, size);
}

void *memalign(size_t align, size_t size)
{
	return shim_memalign(align, size);
}

void *valloc(size_t size)
{
	return shim_memalign((size_t)sysconf(_SC_PAGESIZE), size);
}

void *pvalloc(size_t size)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	return shim_memalign(page, (size + page - 1) & ~(page - 1));
}

/* ---- anonymous memory ---- */

static void maps_lock_take(void)
{
	while (atomic_flag_test_and_set_explicit(&maps_lock,
						 memory_order_acquire))
		;
}

static void maps_lock_drop(void)
{
	atomic_flag_clear_explicit(&maps_lock, memory_order_release);
}

static void maps_add(void *addr, size_t len)
{
	atomic_fetch_add(&live_maps, 1);
	maps_lock_take();
	for (size_t i = 0; i < MAPS_MAX; i++)
		if (maps[i].addr == 0) {
			maps[i].addr = (uintptr_t)addr;
			maps[i].len = (len + 4095) & ~(size_t)4095;
			break;
		}
	maps_lock_drop();
}

/* The slot of a tracked region starting at addr, or -1. Lock held. */
static long maps_find(void *addr)
{
	for (size_t i = 0; i < MAPS_MAX; i++)
		if (maps[i].addr == (uintptr_t)addr)
			return (long)i;
	return -1;
}

static int tracked_kind(int flags)
{
	return (flags & MAP_ANONYMOUS) && (flags & MAP_PRIVATE) &&
	       !(flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	int tracked = tracked_kind(flags);
	if (tracked && shim_fail("mmap"))
		return MAP_FAILED;
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	if (r < 0 && r > -4096) { /* syscall() already set errno */
		return MAP_FAILED;
	}
	void *p = (void *)r;
	if (p == MAP_FAILED)
		return MAP_FAILED;
	if (tracked)
		maps_add(p, len);
	return p;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

/* Subtracts [addr, addr+len) from the tracked regions: a region wholly
 * inside goes, one overlapping an end is trimmed, one around it is split
 * (anon_alloc-style reservations unmap their unaligned head and tail). */
static void maps_remove(uintptr_t lo, size_t len)
{
	uintptr_t hi = lo + ((len + 4095) & ~(size_t)4095);
	maps_lock_take();
	for (size_t i = 0; i < MAPS_MAX; i++) {
		uintptr_t a = maps[i].addr, b = a + maps[i].len;
		if (a == 0 || b <= lo || a >= hi)
			continue;
		if (lo <= a && hi >= b) {
			maps[i].addr = 0;
			maps[i].len = 0;
			atomic_fetch_sub(&live_maps, 1);
		} else if (lo <= a) {
			maps[i].addr = hi;
			maps[i].len = b - hi;
		} else if (hi >= b) {
			maps[i].len = lo - a;
		} else {
			maps[i].len = lo - a;
			maps_lock_drop();
			maps_add((void *)hi, b - hi);
			maps_lock_take();
		}
	}
	maps_lock_drop();
}

int munmap(void *addr, size_t len)
{
	long r = syscall(SYS_munmap, addr, len);
	if (r != 0)
		return -1;
	maps_remove((uintptr_t)addr, len);
	return 0;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *new_addr = NULL;
	if (flags & MREMAP_FIXED) {
		va_list ap;
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	if (new_len > old_len && shim_fail("mremap"))
		return MAP_FAILED;
	long r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	if (r < 0 && r > -4096)
		return MAP_FAILED;
	void *p = (void *)r;
	if (p == MAP_FAILED)
		return MAP_FAILED;
	maps_lock_take();
	long i = maps_find(old);
	if (i >= 0) {
		maps[i].addr = (uintptr_t)p;
		maps[i].len = (new_len + 4095) & ~(size_t)4095;
	}
	maps_lock_drop();
	return p;
}

/* ---- arming and the report ---- */

typedef int (*main_fn)(int, char **, char **);
static main_fn real_main;

static int shim_main(int argc, char **argv, char **envp)
{
	atomic_store(&armed, 1);
	return real_main(argc, argv, envp);
}

typedef int (*start_fn)(main_fn main, int argc, char **argv, void (*init)(void),
			void (*fini)(void), void (*rtld_fini)(void), void *stack);

int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void),
		      void (*fini)(void), void (*rtld_fini)(void), void *stack)
{
	start_fn real = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
	if (real == NULL)
		_exit(127);
	real_main = main;
	return real(shim_main, argc, argv, init, fini, rtld_fini, stack);
}

__attribute__((destructor)) static void shim_report(void)
{
	/* No more counting: exit-time frees still count as frees. */
	atomic_store(&armed, 0);
	const char *path = getenv("FAULT_ALLOC_REPORT");
	if (path == NULL || *path == '\0')
		return;
	const char *kind = atomic_load(&first_kind);
	char line[256];
	int n = snprintf(line, sizeof(line),
			 "calls=%ld fired=%ld live_blocks=%ld live_maps=%ld "
			 "failed_kind=%s\n",
			 atomic_load(&calls), atomic_load(&fired),
			 atomic_load(&live_blocks), atomic_load(&live_maps),
			 kind != NULL ? kind : "-");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (n > 0 && write(fd, line, (size_t)n) != n)
		n = -1;
	close(fd);
}

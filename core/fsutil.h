/*
 * fsutil: the few file-system steps durability is built from, one copy
 * each: writing a whole buffer, fsync of a directory (what makes a
 * rename or an unlink in it durable), removing a directory tree, and
 * reading a small file (a config, a token file) whole.
 * Any thread; no state. Errors: -errno, never retried after an fsync
 * failure (DESIGN §5.1: the kernel may have dropped the dirty pages).
 */
#ifndef CONSENTD_CORE_FSUTIL_H
#define CONSENTD_CORE_FSUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Writes buf[0..len) to fd at its offset (write_all) or at off
 * (pwrite_all), retrying short writes and EINTR. 0, or -errno (-EIO for
 * a write that made no progress). */
int fsutil_write_all(int fd, const void *buf, size_t len);
int fsutil_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* fsync of directory dir. */
int fsutil_fsync_dir(const char *dir);

/* fsync of the directory holding path ("." for a bare name). */
int fsutil_fsync_parent(const char *path);

/* Removes path and, for a directory, everything under it, following no
 * symbolic link. 0 when nothing is left (a path already gone included);
 * else the first failure's -errno, having removed what it could. */
int fsutil_rm_tree(const char *path);

/* The whole of regular file path in *out (malloc'd, NUL-terminated, the
 * caller frees it) and its length in *len: -EINVAL if path is not a
 * regular file, -EMSGSIZE if it holds more than max_bytes, else -errno.
 * Reads what fstat saw, so a file growing meanwhile is cut there. */
int fsutil_read_file(const char *path, size_t max_bytes, char **out,
		     size_t *len);

#endif

/*
 * fsutil: the few file-system steps durability is built from, one copy
 * each: writing a whole buffer, fsync of a directory (what makes a
 * rename or an unlink in it durable) and removing a directory tree
 * (a small file read whole is core/textfile.h's).
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


#endif

/*
 * errmsg: the one way an error message is written into a caller's buffer
 * (the err/err_cap pair of the library's functions). errmsg_set formats
 * into err (truncated to err_cap, always terminated; NULL or 0 is a
 * no-op); errmsg_fail does the same and returns rc, for
 *     return errmsg_fail(err, err_cap, -EINVAL, "line %zu: ...", line);
 * Any thread; no allocation.
 */
#ifndef CONSENTD_CORE_ERRMSG_H
#define CONSENTD_CORE_ERRMSG_H

#include <stdarg.h>
#include <stddef.h>

void errmsg_set(char *err, size_t err_cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int errmsg_fail(char *err, size_t err_cap, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void errmsg_vset(char *err, size_t err_cap, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

#endif

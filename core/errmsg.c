/*
 * errmsg: see core/errmsg.h.
 */
#include "core/errmsg.h"

#include <stdio.h>

void errmsg_vset(char *err, size_t err_cap, const char *fmt, va_list ap)
{
	if (err == NULL || err_cap == 0)
		return;
	vsnprintf(err, err_cap, fmt, ap);
}

void errmsg_set(char *err, size_t err_cap, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	errmsg_vset(err, err_cap, fmt, ap);
	va_end(ap);
}

int errmsg_fail(char *err, size_t err_cap, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	errmsg_vset(err, err_cap, fmt, ap);
	va_end(ap);
	return rc;
}

/*
 * tztime: İYS's wall-clock dates, "YYYY-MM-DD HH:mm:ss" in Turkey time, to
 * and from Unix seconds UTC. İYS states its dates in GMT+3 and Turkey has
 * kept UTC+3 all year since September 2016; DESIGN §1.1 fixes the offset
 * at +3 hours with no DST for every date (İYS dates start in 2015).
 * Pure functions; any thread; no allocation. Errors: -EINVAL, and *why (if
 * not NULL) set to a static text naming the fault.
 */
#ifndef CONSENTD_CORE_TZTIME_H
#define CONSENTD_CORE_TZTIME_H

#include <stddef.h>
#include <stdint.h>

#define TZTIME_OFFSET_S (3 * 3600) /* Turkey: UTC+3 */
#define TZTIME_TEXT_LEN 19         /* "YYYY-MM-DD HH:mm:ss" */

/* Parses exactly "YYYY-MM-DD HH:mm:ss" (a 'T' is accepted in place of the
 * space; nothing before or after, no fraction, no zone). Years 1970-9999;
 * the day must exist in its month (leap years counted); seconds 0-59. */
int tztime_parse(const char *s, size_t len, int64_t *out, const char **why);

/* Writes "YYYY-MM-DD HH:mm:ss" (Turkey time) and a NUL into buf. Returns
 * TZTIME_TEXT_LEN, -ENOSPC if cap < TZTIME_TEXT_LEN + 1, or -EINVAL for a
 * time outside years 1970-9999 Turkey time. */
int tztime_format(int64_t unix_s, char *buf, size_t cap);

#endif

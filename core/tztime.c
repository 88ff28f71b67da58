/*
 * tztime: civil-date arithmetic without the C library's time zones (timegm
 * and localtime depend on TZ and are not what İYS means anyway). The day
 * count uses Howard Hinnant's days_from_civil / civil_from_days: years
 * shifted to start in March, so the leap day is the last day of the year.
 */
#include "core/tztime.h"

#include <errno.h>
#include <stdbool.h>

#define SECONDS_PER_DAY 86400

static bool leap_year(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
	static const unsigned char days[12] = { 31, 28, 31, 30, 31, 30,
						31, 31, 30, 31, 30, 31 };
	return m == 2 && leap_year(y) ? 29 : days[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (y >= 1). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = y / 400; /* y >= 0 here */
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;

	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/* n ASCII digits at s as a number, or -1. */
static int digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int fail(const char **why, const char *text)
{
	if (why)
		*why = text;
	return -EINVAL;
}

int tztime_parse(const char *s, size_t len, int64_t *out, const char **why)
{
	if (len != TZTIME_TEXT_LEN)
		return fail(why, "not YYYY-MM-DD HH:mm:ss");
	if (s[4] != '-' || s[7] != '-' || (s[10] != ' ' && s[10] != 'T') ||
	    s[13] != ':' || s[16] != ':')
		return fail(why, "not YYYY-MM-DD HH:mm:ss");
	int year = digits(s, 4), mon = digits(s + 5, 2), day = digits(s + 8, 2);
	int hour = digits(s + 11, 2), min = digits(s + 14, 2);
	int sec = digits(s + 17, 2);

	if (year < 0 || mon < 0 || day < 0 || hour < 0 || min < 0 || sec < 0)
		return fail(why, "not YYYY-MM-DD HH:mm:ss");
	if (year < 1970)
		return fail(why, "year before 1970");
	if (mon < 1 || mon > 12)
		return fail(why, "month out of range");
	if (day < 1 || day > days_in_month(year, mon))
		return fail(why, "day out of range");
	if (hour > 23 || min > 59 || sec > 59)
		return fail(why, "time of day out of range");
	*out = days_from_civil(year, mon, day) * SECONDS_PER_DAY +
	       hour * 3600 + min * 60 + sec - TZTIME_OFFSET_S;
	return 0;
}

static void put2(char *p, int v)
{
	p[0] = (char)('0' + v / 10);
	p[1] = (char)('0' + v % 10);
}

int tztime_format(int64_t unix_s, char *buf, size_t cap)
{
	/* Bounds: 1970-01-01 00:00:00 and 9999-12-31 23:59:59, Turkey time. */
	const int64_t lo = -TZTIME_OFFSET_S;
	const int64_t hi = days_from_civil(10000, 1, 1) * SECONDS_PER_DAY -
			   TZTIME_OFFSET_S - 1;

	if (cap < TZTIME_TEXT_LEN + 1)
		return -ENOSPC;
	if (unix_s < lo || unix_s > hi)
		return -EINVAL;
	int64_t local = unix_s + TZTIME_OFFSET_S;
	int64_t days = local / SECONDS_PER_DAY; /* local >= 0 */
	int64_t rem = local % SECONDS_PER_DAY;
	int64_t y;
	int m, d;

	civil_from_days(days, &y, &m, &d);
	put2(buf, (int)(y / 100));
	put2(buf + 2, (int)(y % 100));
	buf[4] = '-';
	put2(buf + 5, m);
	buf[7] = '-';
	put2(buf + 8, d);
	buf[10] = ' ';
	put2(buf + 11, (int)(rem / 3600));
	buf[13] = ':';
	put2(buf + 14, (int)(rem / 60 % 60));
	buf[16] = ':';
	put2(buf + 17, (int)(rem % 60));
	buf[19] = '\0';
	return TZTIME_TEXT_LEN;
}

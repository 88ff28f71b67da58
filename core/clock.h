/*
 * clock: CLOCK_MONOTONIC readings for deadlines, timeouts and durations
 * (never for dates: those are CLOCK_REALTIME, Unix seconds). The one copy
 * of each; header-only, any thread, cannot fail on Linux.
 */
#ifndef CONSENTD_CORE_CLOCK_H
#define CONSENTD_CORE_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds since an arbitrary start (boot). */
static inline uint64_t clock_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Seconds, as a double: for durations that are logged. */
static inline double clock_mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif

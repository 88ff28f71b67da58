/*
 * check.h: the unit-test harness. Each tests/X_test.c defines test
 * functions, runs them with RUN(name) from main(), and returns
 * check_summary(), which prints "N passed, N failed" as its last line
 * (scripts/run-tests.sh adds those lines up). A test passes when none of
 * its CHECKs failed; a failed CHECK prints file:line and the expression and
 * the test goes on, so one run shows every failure.
 */
#ifndef CONSENTD_TESTS_CHECK_H
#define CONSENTD_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures_in_test;
static int check_tests_passed;
static int check_tests_failed;

#define CHECK(cond)                                                        \
	do {                                                               \
		if (!(cond)) {                                             \
			check_failures_in_test++;                          \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n",       \
				__FILE__, __LINE__, #cond);                \
		}                                                          \
	} while (0)

/* CHECK with a printf-style explanation printed on failure. */
#define CHECKF(cond, ...)                                                  \
	do {                                                               \
		if (!(cond)) {                                             \
			check_failures_in_test++;                          \
			fprintf(stderr, "%s:%d: CHECK failed: %s: ",       \
				__FILE__, __LINE__, #cond);                \
			fprintf(stderr, __VA_ARGS__);                      \
			fputc('\n', stderr);                               \
		}                                                          \
	} while (0)

#define CHECK_STREQ(a, b) CHECKF(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))

#define RUN(test)                                                          \
	do {                                                               \
		check_failures_in_test = 0;                                \
		test();                                                    \
		if (check_failures_in_test) {                              \
			check_tests_failed++;                              \
			fprintf(stderr, "FAIL %s\n", #test);               \
		} else {                                                   \
			check_tests_passed++;                              \
			fprintf(stderr, "ok   %s\n", #test);               \
		}                                                          \
	} while (0)

static inline int check_summary(void)
{
	printf("%d passed, %d failed\n", check_tests_passed, check_tests_failed);
	return check_tests_failed ? 1 : 0;
}

#endif

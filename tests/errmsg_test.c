/*
 * errmsg_test: core/errmsg.c, the one error-message setter: formats,
 * truncates to the buffer and terminates, ignores a NULL or empty buffer,
 * and errmsg_fail hands back the code it was given.
 */
#include <errno.h>

#include "core/errmsg.h"
#include "tests/check.h"

static void test_set_and_truncate(void)
{
	char buf[8];

	errmsg_set(buf, sizeof(buf), "line %d: %s", 7, "bad");
	CHECK_STREQ(buf, "line 7:");
	errmsg_set(buf, sizeof(buf), "%s", "");
	CHECK_STREQ(buf, "");
	errmsg_set(NULL, 0, "nothing %d", 1);   /* no buffer: no-op */
	buf[0] = 'x';
	errmsg_set(buf, 0, "nothing %d", 1);    /* empty: untouched */
	CHECK(buf[0] == 'x');
}

static void test_fail_returns_rc(void)
{
	char buf[64];

	CHECK(errmsg_fail(buf, sizeof(buf), -EINVAL, "field %s", "brand") ==
	      -EINVAL);
	CHECK_STREQ(buf, "field brand");
	CHECK(errmsg_fail(NULL, 0, -ENOMEM, "x") == -ENOMEM);
}

int main(void)
{
	RUN(test_set_and_truncate);
	RUN(test_fail_returns_rc);
	return check_summary();
}

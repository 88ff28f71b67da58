/*
 * rpc_diff: the differential the RPC decoder's test and fuzzer share:
 * rpc_decode_checks (checks decoded straight into the worker's batch)
 * against rpc_decode and its check iterator, with room for cap checks.
 * NULL when they agree, else what differs. Not thread-safe (one static
 * array).
 */
#ifndef CONSENTD_TESTS_RPC_DIFF_H
#define CONSENTD_TESTS_RPC_DIFF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "index/check.h"
#include "server/rpc.h"

static inline const char *decode_checks_diff(const uint8_t *buf, size_t len,
				      size_t cap)
{
	static struct check_input arr[300];
	struct rpc_request a, b;
	struct rpc_check_iter it;
	struct check_input in;
	int ra = rpc_decode(buf, len, &a);
	int rb;

	if (cap > 300)
		cap = 300;
	memset(arr, 0x5a, sizeof(arr));
	rb = rpc_decode_checks(buf, len, &b, arr, cap);
	if (ra != rb)
		return "decode_checks: result";
	if (ra < 0)
		return NULL;
	if (a.checks_decoded)
		return "decode: checks_decoded without an array";
	if (b.checks_decoded != (b.kind == RPC_REQ_CHECK && b.n_checks <= cap))
		return "decode_checks: checks_decoded";
	b.checks_decoded = false;
	if (memcmp(&a, &b, sizeof(a)) != 0)
		return "decode_checks: request";
	if (b.kind != RPC_REQ_CHECK || b.n_checks > cap)
		return NULL;
	rpc_check_iter_init(&it, &a);
	for (size_t i = 0; i < a.n_checks; i++) {
		const struct check_input *c = &arr[i];

		if (!rpc_check_next(&it, &a, &in))
			return "decode_checks: iterator ran short";
		if (c->recipient != in.recipient ||
		    c->recipient_len != in.recipient_len ||
		    c->brand_code != in.brand_code || c->channel != in.channel ||
		    c->rtype != in.rtype || c->purpose != in.purpose ||
		    c->as_of_time != in.as_of_time ||
		    c->as_of_sequence != in.as_of_sequence)
			return "decode_checks: a check";
	}
	return NULL;
}


#endif

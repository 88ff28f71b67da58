/*
 * json_fuzz: json_decode_check_request on arbitrary bytes (an exact-size
 * copy, so ASan sees any over-read), with a small check limit so the
 * limit paths are reachable; and the same bytes as a POST /v1/reject body
 * (json_decode_reject) and a POST /v1/outbox/pushed body
 * (json_decode_pushed), whose results go through json_encode_outbox.
 * Invariants (a violation traps):
 *   - failure: -EINVAL or -EMSGSIZE (or -ENOMEM), nothing returned, and a
 *     NUL-terminated, non-empty, printable-ASCII message (it goes back to
 *     the client inside JSON);
 *   - success: at most the limit of checks; every recipient non-NULL with
 *     no NUL byte in it; every enum within the schema's values;
 *   - the error message and a verdict list of the decoded size encode to
 *     JSON that jansson parses back with the same number of verdicts.
 * The same bytes, cut at their first '=', are also one query parameter
 * of GET /v1/check and of GET /v1/history (json_check_param,
 * json_history_param: as_of_time and as_of_sequence's integer text among
 * them): a field's bit, or -EINVAL with a printable message.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/enums.h"
#include "index/outbox.h"
#include "server/json.h"

#define REQUIRE(c)                                                         \
	do {                                                               \
		if (!(c))                                                  \
			__builtin_trap();                                  \
	} while (0)

#define FUZZ_MAX_CHECKS 64

static void check_reencodes(const char *text, size_t n_verdicts)
{
	json_error_t je;
	json_t *doc;

	REQUIRE(text != NULL);
	doc = json_loads(text, 0, &je);
	REQUIRE(doc != NULL);
	if (n_verdicts != (size_t)-1)
		REQUIRE(json_array_size(json_object_get(doc, "verdicts")) ==
			n_verdicts);
	json_decref(doc);
}

static void check_error(int rc, const char *err)
{
	REQUIRE(rc == -EINVAL || rc == -EMSGSIZE || rc == -ENOMEM);
	REQUIRE(err[0]);
	for (const char *p = err; *p; p++)
		REQUIRE(*p >= 0x20 && *p < 0x7f);
}

static void fuzz_reject_and_pushed(const char *body, size_t size)
{
	struct json_reject jr;
	char err[256], id[OUTBOX_TXID_MAX + 1];
	uint64_t seq;
	int rc;

	memset(err, 'x', sizeof(err));
	err[sizeof(err) - 1] = '\0';
	rc = json_decode_reject(body, size, &jr, err, sizeof(err));
	if (rc != 0) {
		check_error(rc, err);
		REQUIRE(jr.doc == NULL);
	} else {
		REQUIRE(jr.recipient != NULL);
		REQUIRE(memchr(jr.recipient, 0, jr.recipient_len) == NULL);
		REQUIRE(jr.channel >= 0 && jr.channel <= CHANNEL_EPOSTA);
		REQUIRE(jr.recipient_type >= 0 && jr.recipient_type <= RTYPE_TACIR);
		REQUIRE(jr.source == 0 || enums_source_valid(jr.source));
		json_reject_fini(&jr);
	}
	memset(err, 'x', sizeof(err));
	err[sizeof(err) - 1] = '\0';
	rc = json_decode_pushed(body, size, &seq, id, sizeof(id), err,
				sizeof(err));
	if (rc != 0) {
		check_error(rc, err);
		return;
	}
	REQUIRE(seq > 0);
	size_t len = strlen(id);
	REQUIRE(len > 0 && len < sizeof(id));
	struct outbox_entry e;
	memset(&e, 0, sizeof(e));
	e.sequence = seq;
	e.state = OUTBOX_PUSHED;
	memcpy(e.pushed_id, id, len + 1);
	char *out = json_encode_outbox(&e, 1, 1);
	REQUIRE(out != NULL);
	json_error_t je;
	json_t *doc = json_loads(out, 0, &je);
	REQUIRE(doc != NULL);
	json_t *got = json_object_get(json_array_get(json_object_get(doc,
		"entries"), 0), "transaction_id");
	REQUIRE(got != NULL && strcmp(json_string_value(got), id) == 0);
	json_decref(doc);
	free(out);
}

/* body as KEY=VALUE, one query parameter. */
static void fuzz_param(const char *body, size_t size)
{
	const char *eq = memchr(body, '=', size);
	size_t kl = eq ? (size_t)(eq - body) : size;
	const char *val = eq ? eq + 1 : "";
	size_t vl = eq ? size - kl - 1 : 0;
	char err[256];

	for (int which = 0; which < 2; which++) {
		struct check_input c;
		memset(&c, 0, sizeof(c));
		memset(err, 'x', sizeof(err));
		err[sizeof(err) - 1] = '\0';
		int rc = which == 0
			? json_check_param(&c, body, kl, val, vl, err,
					   sizeof(err))
			: json_history_param(&c, body, kl, val, vl, err,
					     sizeof(err));
		if (rc < 0) {
			check_error(rc, err);
			continue;
		}
		/* One field's bit, and the value where it belongs. */
		REQUIRE(rc > 0 && (rc & (rc - 1)) == 0);
		REQUIRE(c.channel >= 0 && c.channel <= CHANNEL_EPOSTA);
		REQUIRE(c.rtype >= 0 && c.rtype <= RTYPE_TACIR);
		REQUIRE(c.purpose >= 0 && c.purpose <= PURPOSE_BILGILENDIRME);
		REQUIRE(which == 0 || (c.purpose == 0 && c.as_of_time == 0 &&
				       c.as_of_sequence == 0));
		if (c.recipient != NULL)
			REQUIRE(c.recipient == val && c.recipient_len == vl);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *body = malloc(size ? size : 1);
	struct json_check_request req;
	char err[256];
	int rc;

	if (body == NULL)
		return 0;
	if (size)
		memcpy(body, data, size);
	fuzz_reject_and_pushed(body, size);
	fuzz_param(body, size);
	memset(err, 'x', sizeof(err));
	rc = json_decode_check_request(body, size, FUZZ_MAX_CHECKS, &req, err,
				       sizeof(err));
	if (rc != 0) {
		char *e;

		REQUIRE(rc == -EINVAL || rc == -EMSGSIZE || rc == -ENOMEM);
		REQUIRE(req.checks == NULL && req.doc == NULL);
		REQUIRE(memchr(err, 0, sizeof(err)) != NULL && err[0]);
		for (const char *p = err; *p; p++)
			REQUIRE(*p >= 0x20 && *p < 0x7f);
		e = json_encode_error(err);
		check_reencodes(e, (size_t)-1);
		free(e);
		free(body);
		return 0;
	}
	REQUIRE(req.n_checks <= FUZZ_MAX_CHECKS);
	{
		struct verdict v[FUZZ_MAX_CHECKS];
		char *out;

		for (size_t i = 0; i < req.n_checks; i++) {
			const struct check_input *c = &req.checks[i];

			REQUIRE(c->recipient != NULL);
			REQUIRE(memchr(c->recipient, 0, c->recipient_len) == NULL);
			REQUIRE(c->channel >= 0 && c->channel <= CHANNEL_EPOSTA);
			REQUIRE(c->rtype >= 0 && c->rtype <= RTYPE_TACIR);
			REQUIRE(c->purpose >= 0 &&
				c->purpose <= PURPOSE_BILGILENDIRME);
			/* A verdict shaped by the input, to exercise the
			 * encoder's optional fields. */
			memset(&v[i], 0, sizeof(v[i]));
			v[i].reason = (uint8_t)(1 + c->brand_code % 8);
			v[i].allow = c->brand_code & 1;
			v[i].status = (uint8_t)(c->channel % 3);
			v[i].source = (uint8_t)(c->brand_code % 64);
			v[i].consent_date = (int64_t)c->brand_code * 1000;
			v[i].error = c->rtype == RTYPE_TACIR ? "why" : NULL;
		}
		out = json_encode_check_response(v, req.n_checks,
						 req.n_checks, -1);
		check_reencodes(out, req.n_checks);
		free(out);
	}
	json_check_request_fini(&req);
	free(body);
	return 0;
}

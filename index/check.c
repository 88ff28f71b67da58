/*
 * check: validate, authorise, then decide a chunk of up to CHECK_BATCH_MAX
 * checks with one batched index lookup (the index hashes every key, then
 * prefetches every home bucket, so the DRAM misses of a chunk overlap).
 * Rows 1 and 2 are decided without touching the index: an unauthorised
 * brand costs the same whether or not it has records.
 *
 * Informational checks (row 3) are looked up too: their verdict carries
 * the record for information, and one more key in a batch is nearly free.
 *
 * With no index at all (env->index NULL: nothing loaded yet) nothing is
 * looked up and the data counts as stale, so no allow is ever made without
 * data behind it (row 7 would otherwise allow every TACIR).
 */
#include "index/check.h"

#include <assert.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/table.h"

#define BRAND_CODE_MAX 99999999u /* İYS brand codes have up to 8 digits */

static_assert(CHECK_BATCH_MAX <= 256, "check_chunk indexes with uint8_t");

/* Row 1 for one check: NULL if well formed (and *r normalised), else the
 * static reason. */
static const char *check_validate(const struct check_input *c,
				  struct recipient *r)
{
	const char *why = NULL;

	if (c->brand_code == 0)
		return "brand_code: missing (0 is not a brand)";
	if (c->brand_code > BRAND_CODE_MAX)
		return "brand_code: more than 8 digits";
	if (c->channel == CHANNEL_NONE)
		return "channel: missing (ARAMA, MESAJ or EPOSTA)";
	if (c->channel < CHANNEL_ARAMA || c->channel > CHANNEL_EPOSTA)
		return "channel: not ARAMA, MESAJ or EPOSTA";
	if (c->rtype < RTYPE_NONE || c->rtype > RTYPE_TACIR)
		return "recipient_type: not BIREYSEL or TACIR";
	if (c->purpose < PURPOSE_NONE || c->purpose > PURPOSE_BILGILENDIRME)
		return "purpose: not TICARI or BILGILENDIRME";
	if (c->as_of_time != 0 && c->as_of_sequence != 0)
		return "as_of_time, as_of_sequence: at most one may be set";
	if (c->as_of_time != 0 || c->as_of_sequence != 0)
		return "as_of_time, as_of_sequence: this server keeps no "
		       "history to answer as of a past state";
	if (recipient_normalize(c->recipient, c->recipient_len, r, &why) < 0)
		return why;
	if (r->kind == RECIPIENT_PHONE && c->channel == CHANNEL_EPOSTA)
		return "channel: EPOSTA needs an e-mail address, not a phone "
		       "number";
	if (r->kind == RECIPIENT_EMAIL && c->channel != CHANNEL_EPOSTA)
		return "channel: ARAMA and MESAJ need a phone number, not an "
		       "e-mail address";
	return NULL;
}

static void check_chunk(const struct check_env *env,
			const struct check_input *in, size_t n,
			struct verdict *out)
{
	struct index_key keys[CHECK_BATCH_MAX];
	struct consent_value values[CHECK_BATCH_MAX];
	bool found[CHECK_BATCH_MAX];
	uint8_t pos[CHECK_BATCH_MAX]; /* keys[j] belongs to in[pos[j]] */
	struct decision_input d;
	struct recipient r;
	size_t i, m = 0;
	bool stale = env->stale || env->index == NULL;

	for (i = 0; i < n; i++) {
		const struct check_input *c = &in[i];
		const char *invalid = check_validate(c, &r);

		if (invalid != NULL ||
		    !principal_may_check(env->principal, c->brand_code)) {
			d.invalid = invalid;
			d.authorized = false;
			d.purpose = c->purpose;
			d.rtype = c->rtype;
			d.stale = stale;
			d.record = NULL;
			decision_decide(env->policy, &d, &out[i]);
			continue;
		}
		if (env->index == NULL) {
			/* Nothing to look in: decide as "no record". */
			d.invalid = NULL;
			d.authorized = true;
			d.purpose = c->purpose;
			d.rtype = c->rtype;
			d.stale = stale;
			d.record = NULL;
			decision_decide(env->policy, &d, &out[i]);
			continue;
		}
		index_key_make(env->index, &r, c->brand_code,
			       c->rtype == RTYPE_NONE ? RTYPE_BIREYSEL : c->rtype,
			       c->channel, &keys[m]);
		pos[m++] = (uint8_t)i;
	}
	if (m == 0)
		return;

	index_lookup_batch(env->index, keys, m, values, found);

	d.invalid = NULL;
	d.authorized = true;
	d.stale = stale;
	for (i = 0; i < m; i++) {
		const struct check_input *c = &in[pos[i]];

		d.purpose = c->purpose;
		d.rtype = c->rtype;
		d.record = found[i] ? &values[i] : NULL;
		decision_decide(env->policy, &d, &out[pos[i]]);
	}
}

void check_batch(const struct check_env *env, const struct check_input *in,
		 size_t n, struct verdict *out)
{
	size_t done = 0;

	principal_count_checks(env->principal, n);
	while (done < n) {
		size_t k = n - done < CHECK_BATCH_MAX ? n - done
						       : CHECK_BATCH_MAX;

		check_chunk(env, in + done, k, out + done);
		done += k;
	}
}

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
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/tokens.h"
#include "index/history.h"
#include "index/table.h"

#define BRAND_CODE_MAX 99999999u /* İYS brand codes have up to 8 digits */

static_assert(CHECK_BATCH_MAX <= 256, "check_chunk indexes with uint8_t");

/* Row 1 for one check: NULL if well formed (and *r normalised), else the
 * static reason. */
static inline __attribute__((always_inline)) const char *
check_validate(const struct check_input *c, struct recipient *r)
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

const char *check_validate_key(const struct check_input *c,
			       struct recipient *r)
{
	return check_validate(c, r);
}

static_assert(CHECK_TXID_MAX ==
		      sizeof(((struct history_entry *)0)->transaction_id),
	      "an entry's transaction_id fits its evidence slot");

/* One as-of check (§10), off the live path: rows 1-2 as for a live
 * check (both points set, and history off, are row 1 too), then the
 * key's state as of the point from the evidence store, decided by the
 * same table without staleness. ev: where its strings go (NULL: none). */
/* Out of line and cold: the live path keeps its code as it was. */
static __attribute__((noinline, cold)) void
check_as_of(const struct check_env *env, const struct check_input *c,
	    struct check_evidence *ev, struct verdict *out)
{
	struct decision_input d = {
		.purpose = c->purpose, .rtype = c->rtype,
		.authorized = true, .stale = false,
	};
	struct recipient r;
	struct history_entry e;
	struct consent_value v;
	char text[RECIPIENT_TEXT_MAX];
	int rtype = c->rtype == RTYPE_NONE ? RTYPE_BIREYSEL : c->rtype;

	d.invalid = check_validate(c, &r);
	if (d.invalid == NULL && c->as_of_time != 0 && c->as_of_sequence != 0)
		d.invalid = "as_of_time, as_of_sequence: at most one may be "
			    "set";
	if (d.invalid == NULL && c->as_of_time < 0)
		d.invalid = "as_of_time: before 1970";
	if (d.invalid == NULL && env->history == NULL)
		d.invalid = "as_of_time, as_of_sequence: history is off "
			    "(--history off): no past state to answer from";
	if (d.invalid == NULL && ev == NULL)
		d.invalid = "as_of_time, as_of_sequence: not answered here";
	if (d.invalid == NULL &&
	    !principal_may_check(env->principal, c->brand_code))
		d.authorized = false;
	if (d.invalid != NULL || !d.authorized) {
		decision_decide(env->policy, &d, out);
		return;
	}
	recipient_format(&r, text, sizeof(text));
	uint64_t point = c->as_of_sequence;
	if (point != 0 && env->index != NULL) {
		/* A position past history's last record but not past what
		 * is served (heartbeats, refused batches use positions and
		 * write nothing) had the state of that last record. */
		struct history_state st;
		struct index_info info;
		history_state(env->history, &st);
		index_info(env->index, &info);
		if (st.records > 0 && point > st.last_sequence &&
		    point <= info.watermark)
			point = st.last_sequence;
	}
	char herr[200];
	int rc = history_as_of(env->history, text, c->brand_code, c->channel,
			       rtype, point != 0 ? HISTORY_AT_SEQUENCE :
			       HISTORY_AT_TIME, point != 0 ? point :
			       (uint64_t)c->as_of_time, &e, herr, sizeof(herr));
	if (rc < 0) {
		/* Before the start or past the end (-ERANGE): the request
		 * names a point the history cannot answer for. Anything
		 * else is the store's failure, said as such. */
		snprintf(ev->error, sizeof(ev->error), "%s: %s",
			 rc == -ERANGE ? (c->as_of_sequence != 0 ?
					  "as_of_sequence" : "as_of_time")
				       : "history cannot be read",
			 herr);
		d.invalid = ev->error;
		decision_decide(env->policy, &d, out);
		return;
	}
	d.record = NULL;
	if (rc == 1) {
		v.status = (uint8_t)e.consent.status;
		v.source = (uint8_t)enums_source_stored((int)e.consent.source);
		v.consent_date = e.consent.consent_date;
		d.record = &v;
	}
	decision_decide(env->policy, &d, out);
	ev->transaction_id[0] = '\0';
	if (rc == 1)
		snprintf(ev->transaction_id, sizeof(ev->transaction_id), "%s",
			 e.consent.transaction_id != NULL ?
				 e.consent.transaction_id : "");
	out->transaction_id = ev->transaction_id;
	out->sequence = rc == 1 ? e.consent.sequence : 0;
}

/* Returns how many of the chunk were answered as of a point. */
static size_t check_chunk(const struct check_env *env,
			  const struct check_input *in, size_t n,
			  struct verdict *out, struct check_evidence *ev)
{
	struct index_key keys[CHECK_BATCH_MAX];
	struct consent_value values[CHECK_BATCH_MAX];
	bool found[CHECK_BATCH_MAX];
	uint8_t pos[CHECK_BATCH_MAX]; /* keys[j] belongs to in[pos[j]] */
	struct decision_input d;
	struct recipient r;
	size_t i, m = 0, n_as_of = 0;
	bool stale = env->stale || env->index == NULL;

	for (i = 0; i < n; i++) {
		const struct check_input *c = &in[i];
		/* The live path's one test for §10: as-of checks go apart. */
		if (__builtin_expect((c->as_of_time |
				      (int64_t)c->as_of_sequence) != 0, 0)) {
			check_as_of(env, c, ev != NULL ? &ev[i] : NULL,
				    &out[i]);
			n_as_of += out[i].transaction_id != NULL;
			continue;
		}
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
		return n_as_of;

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
	return n_as_of;
}

size_t check_batch(const struct check_env *env, const struct check_input *in,
		   size_t n, struct verdict *out)
{
	size_t done = 0, n_as_of = 0;

	principal_count_checks(env->principal, n);
	while (done < n) {
		size_t k = n - done < CHECK_BATCH_MAX ? n - done
						       : CHECK_BATCH_MAX;

		n_as_of += check_chunk(env, in + done, k, out + done,
				       env->evidence != NULL
					       ? env->evidence + done : NULL);
		done += k;
	}
	return n_as_of;
}

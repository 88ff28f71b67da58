/*
 * loadgen_reqs: the requests of a run and the replies they must get, all
 * prepared before the first connection (bench/loadgen.h).
 *
 * Drawing keys, formatting recipients, packing protobuf and unpacking the
 * replies cost the client more than the server spends answering, so a
 * client that did them per request measured itself (1.56 M checks/s at
 * batch 100 with the client at 95 % of its core and the server at 34 %).
 * Here each request is drawn and encoded once: the run copies its bytes,
 * writes the id into the 8 bytes reserved for it, and compares the reply
 * with the expected bytes, which lg_expect_bytes packs from the answers
 * the decision table gives (loadgen_keys.c), not from anything the server
 * said. The keys of every check are kept, so a reply that differs is
 * decoded in full against answers recomputed from the dataset: a wrong
 * answer is named field by field, and a right one encoded differently is
 * still accepted (and counted as decoded).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bench/loadgen.h"

/* Where a request's id sits in its rpc frame: after the 4-byte length and
 * the tag of Request.id (protobuf-c packs fields in number order). */
#define LG_ID_AT 5
#define LG_ID_BYTES 8

struct lg_req {
	uint64_t frame_off; /* into frames */
	uint64_t reply_off; /* into replies */
	uint32_t frame_len;
	uint32_t reply_len;
	uint32_t hits;
};

struct lg_reqs {
	enum lg_proto proto;
	uint32_t batch;
	uint32_t count;
	const struct lg_keys *keys;
	struct lg_req *req;  /* count */
	uint64_t *key;       /* count * batch: lg_expect.key of each check */
	struct lg_buf frames;
	struct lg_buf replies;
};

/* Is the id of the frame at f the 8-byte varint of LG_ID_BASE? */
static bool id_in_place(const unsigned char *f, size_t len)
{
	if (len < LG_ID_AT + LG_ID_BYTES || f[LG_ID_AT - 1] != 0x08)
		return false;
	uint64_t v = 0;
	for (unsigned i = 0; i < LG_ID_BYTES; i++) {
		unsigned char b = f[LG_ID_AT + i];
		if ((i < LG_ID_BYTES - 1) != !!(b & 0x80))
			return false;
		v |= (uint64_t)(b & 0x7f) << (7 * i);
	}
	return v == LG_ID_BASE;
}

/* Gives a buffer back its unused tail (the doubling leaves up to half). */
static void buf_shrink(struct lg_buf *b)
{
	char *d = realloc(b->data, b->len ? b->len : 1);
	if (d) {
		b->data = d;
		b->cap = b->len ? b->len : 1;
	}
}

int lg_reqs_create(const struct lg_keys *keys, const struct lg_reqs_config *cfg,
		   struct lg_reqs **out)
{
	if (cfg->batch == 0 || cfg->count == 0)
		return -EINVAL;
	struct lg_reqs *t = calloc(1, sizeof(*t));
	struct lg_check *checks = calloc(cfg->batch, sizeof(*checks));
	struct lg_expect *expect = calloc(cfg->batch, sizeof(*expect));
	struct lg_codec *codec = NULL;
	int rc = -ENOMEM;

	if (!t || !checks || !expect)
		goto fail;
	t->proto = cfg->proto;
	t->batch = cfg->batch;
	t->count = cfg->count;
	t->keys = keys;
	t->req = calloc(cfg->count, sizeof(*t->req));
	t->key = calloc((size_t)cfg->count * cfg->batch, sizeof(*t->key));
	if (!t->req || !t->key)
		goto fail;
	rc = lg_codec_create(cfg->batch, &codec);
	if (rc < 0)
		goto fail;

	struct lg_rng rng;
	lg_rng_seed(&rng, cfg->seed ^ 0x7265717565737473ull);
	for (uint32_t r = 0; r < cfg->count; r++) {
		struct lg_req *q = &t->req[r];
		q->hits = lg_keys_next(keys, &rng, checks);
		q->frame_off = t->frames.len;
		rc = lg_encode(codec, cfg->proto, LG_ID_BASE, checks, cfg->batch,
			       &t->frames);
		if (rc < 0)
			goto fail;
		q->frame_len = (uint32_t)(t->frames.len - q->frame_off);
		if (cfg->proto == LG_PROTO_RPC &&
		    !id_in_place((const unsigned char *)t->frames.data +
					 q->frame_off, q->frame_len)) {
			rc = -EPROTO; /* protobuf-c packed the id elsewhere */
			goto fail;
		}
		uint64_t *key = &t->key[(size_t)r * cfg->batch];
		for (uint32_t i = 0; i < cfg->batch; i++) {
			expect[i] = checks[i].expect;
			key[i] = checks[i].expect.key;
		}
		q->reply_off = t->replies.len;
		rc = lg_expect_bytes(cfg->proto, expect, cfg->batch, &t->replies);
		if (rc < 0)
			goto fail;
		q->reply_len = (uint32_t)(t->replies.len - q->reply_off);
	}
	buf_shrink(&t->frames);
	buf_shrink(&t->replies);
	lg_codec_destroy(codec);
	free(checks);
	free(expect);
	*out = t;
	return 0;
fail:
	lg_codec_destroy(codec);
	free(checks);
	free(expect);
	lg_reqs_destroy(t);
	return rc;
}

void lg_reqs_destroy(struct lg_reqs *reqs)
{
	if (!reqs)
		return;
	free(reqs->req);
	free(reqs->key);
	lg_buf_fini(&reqs->frames);
	lg_buf_fini(&reqs->replies);
	free(reqs);
}

uint32_t lg_reqs_count(const struct lg_reqs *reqs)
{
	return reqs->count;
}

size_t lg_reqs_bytes(const struct lg_reqs *reqs)
{
	return reqs->count * sizeof(*reqs->req) +
	       (size_t)reqs->count * reqs->batch * sizeof(*reqs->key) +
	       reqs->frames.cap + reqs->replies.cap;
}

uint32_t lg_reqs_hits(const struct lg_reqs *reqs, uint32_t r)
{
	return reqs->req[r].hits;
}

int lg_reqs_emit(const struct lg_reqs *reqs, uint32_t r, uint64_t id,
		 struct lg_buf *out)
{
	const struct lg_req *q = &reqs->req[r];
	if (reqs->proto == LG_PROTO_RPC && (id < LG_ID_BASE || id >= LG_ID_END))
		return -ERANGE;
	int rc = lg_buf_reserve(out, q->frame_len);
	if (rc < 0)
		return rc;
	unsigned char *p = (unsigned char *)out->data + out->len;
	memcpy(p, reqs->frames.data + q->frame_off, q->frame_len);
	if (reqs->proto == LG_PROTO_RPC) {
		/* id < 2^56 fits 8 groups of 7 bits; id >= 2^49 makes the
		 * last group non-zero, so the varint stays minimal. */
		for (unsigned i = 0; i < LG_ID_BYTES; i++) {
			unsigned char b = (unsigned char)((id >> (7 * i)) & 0x7f);
			p[LG_ID_AT + i] = i < LG_ID_BYTES - 1 ? b | 0x80 : b;
		}
	}
	out->len += q->frame_len;
	return 0;
}

long lg_reqs_verify(const struct lg_reqs *reqs, struct lg_codec *c,
		    uint32_t r, uint64_t id, bool full, struct lg_expect *scratch,
		    const char *in, size_t len, struct lg_reply *out)
{
	const struct lg_req *q = &reqs->req[r];
	if (!full) {
		long used = lg_fast_verify(reqs->proto, id,
					   reqs->replies.data + q->reply_off,
					   q->reply_len, in, len);
		if (used > 0) {
			out->wrong = 0;
			out->checks = reqs->batch;
			out->decoded = false;
			out->detail[0] = '\0';
		}
		if (used != LG_FAST_UNSURE)
			return used;
	}
	/* The answers again, from the dataset and the decision table. */
	const uint64_t *key = &reqs->key[(size_t)r * reqs->batch];
	struct lg_check ck;
	for (uint32_t i = 0; i < reqs->batch; i++) {
		lg_keys_check(reqs->keys, key[i], &ck);
		scratch[i] = ck.expect;
	}
	return lg_decode(c, reqs->proto, id, scratch, reqs->batch, in, len, out);
}

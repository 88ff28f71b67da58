/*
 * loadgen: the load generator behind `make bench` (bench/README.md). One
 * process, T threads, each with its own io_uring (or epoll) and its share of N
 * connections; every reply is verified against the answer computed from
 * the same synthetic record (core/synth.h), so a fast wrong server loses.
 * Internal header shared by bench/loadgen*.c: the histogram (loadgen_hist.c),
 * the key chooser and expected answers (loadgen_keys.c), the request
 * encoders and reply verifiers per protocol (loadgen_proto.c), and the
 * table of requests prepared at start-up with their expected reply bytes
 * (loadgen_reqs.c). Everything here is per thread unless it says
 * otherwise; errors are -errno.
 */
#ifndef CONSENTD_BENCH_LOADGEN_H
#define CONSENTD_BENCH_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/synth.h"

/* ---- histogram (loadgen_hist.c) ----------------------------------------
 * Log-linear: values below 2^HIST_SUB_BITS exactly, above that 2^7
 * sub-buckets per power of two, so any value is reported within 0.8 %.
 * Merging is element-wise addition. Values are nanoseconds. */
#define HIST_SUB_BITS 7
#define HIST_SUB_COUNT (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB_COUNT)

struct hist {
	uint64_t count;
	uint64_t sum;
	uint64_t min;
	uint64_t max;
	uint64_t buckets[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t value);
void hist_merge(struct hist *into, const struct hist *from);
/* The value at quantile q (0..1): the upper bound of its bucket, capped by
 * the exact maximum; 0 for an empty histogram. */
uint64_t hist_quantile(const struct hist *h, double q);

/* ---- the dataset and expected answers (loadgen_keys.c) ----------------- */

enum lg_skew {
	LG_SKEW_UNIFORM = 0, /* every key equally likely */
	LG_SKEW_ZIPF = 1,    /* rank r drawn with weight 1/r^0.99 */
};

/* What the server must answer for one check. For redis-get the stored
 * value is derived from the same fields (loadgen_proto.c). */
struct lg_expect {
	uint64_t key;         /* record index, or LG_KEY_ABSENT | absent index */
	int64_t consent_date; /* 0 when there is no record */
	uint8_t allow;
	uint8_t reason;       /* enum reason */
	uint8_t status;       /* enum status, 0 when there is no record */
	uint8_t source;       /* wire Source value, 0 when there is none */
};
#define LG_KEY_ABSENT (1ull << 63)

/* One check to send: the record text plus its expected answer. */
struct lg_check {
	struct synth_record rec;
	struct lg_expect expect;
};

struct lg_rng {
	uint64_t s[4]; /* xoshiro256** state */
};

void lg_rng_seed(struct lg_rng *r, uint64_t seed);
uint64_t lg_rng_next(struct lg_rng *r);
double lg_rng_unit(struct lg_rng *r);           /* [0, 1) */
uint64_t lg_rng_below(struct lg_rng *r, uint64_t n); /* [0, n), n > 0 */

/* Rejection-inversion Zipf sampler (Hörmann & Derflinger 1996): O(1)
 * set-up and draws, no table, so it works for 10^9 keys. */
struct lg_zipf {
	uint64_t n;
	double s, h_x1, h_n, s_div;
};
void lg_zipf_init(struct lg_zipf *z, uint64_t n, double exponent);
uint64_t lg_zipf_draw(const struct lg_zipf *z, struct lg_rng *r); /* [0, n) */

/* The key chooser: shared, read-only after lg_keys_create. Batches of more
 * than one check are "campaigns": every check of a batch has the same
 * brand, channel and recipient type (MCHECK needs that; the RPC batch sets
 * them once at request level), drawn from pools of present and absent keys
 * grouped by (brand, channel, type). */
struct lg_keys;

struct lg_keys_config {
	uint64_t seed;
	uint64_t records;
	double hit_ratio;  /* share of checks whose key is present */
	enum lg_skew skew;
	uint32_t batch;    /* checks per request */
	uint64_t pool;     /* keys per pool for batches > 1 */
};

int lg_keys_create(const struct lg_keys_config *cfg, struct lg_keys **out);
void lg_keys_destroy(struct lg_keys *keys);
/* Fills out[0..batch) with the next request's checks; any thread, each with
 * its own rng. Returns how many of them are present keys. */
uint32_t lg_keys_next(const struct lg_keys *keys, struct lg_rng *rng,
		      struct lg_check *out);
/* The expected answer for record i, or absent key j (default policy, fresh
 * data, purpose TICARI). */
void lg_expect_present(uint64_t i, const struct synth_record *rec,
		       struct lg_expect *out);
void lg_expect_absent(uint64_t j, const struct synth_record *rec,
		      struct lg_expect *out);
/* The check (record text and expected answer) for a key as lg_expect.key
 * holds it: a record index, or LG_KEY_ABSENT | an absent index. */
void lg_keys_check(const struct lg_keys *keys, uint64_t key,
		   struct lg_check *out);

/* ---- protocols (loadgen_proto.c) ---------------------------------------- */

enum lg_proto {
	LG_PROTO_RPC = 0,         /* length-prefixed consent.v1.Request */
	LG_PROTO_RESP_CHECK = 1,  /* CHECK, one per request */
	LG_PROTO_RESP_MCHECK = 2, /* MCHECK of batch recipients */
	LG_PROTO_REDIS_GET = 3,   /* GET, one per request */
	LG_PROTO_REDIS_MGET = 4,  /* MGET of batch keys */
};

/* A growable byte buffer. */
struct lg_buf {
	char *data;
	size_t len;
	size_t cap;
};
int lg_buf_reserve(struct lg_buf *b, size_t more);
void lg_buf_fini(struct lg_buf *b);

/* Per-thread scratch for encoding and decoding (protobuf-c arena). */
struct lg_codec;
int lg_codec_create(uint32_t batch, struct lg_codec **out);
void lg_codec_destroy(struct lg_codec *c);

/* Appends one request of n checks to out; id is the RPC request id. */
int lg_encode(struct lg_codec *c, enum lg_proto proto, uint64_t id,
	      const struct lg_check *checks, uint32_t n, struct lg_buf *out);

/* The verdict on one reply. */
struct lg_reply {
	uint32_t wrong;     /* checks answered wrongly (or the whole reply) */
	uint32_t checks;    /* checks answered */
	bool decoded;       /* judged by a full decode, not by its bytes */
	char detail[400];   /* first mismatch, for the diagnostics */
};

/* Decodes one reply from in[0..len) and verifies it against expect[0..n)
 * and id. Returns bytes consumed, 0 if the reply is not complete yet,
 * -EPROTO if the bytes are not a reply at all (the connection is broken). */
long lg_decode(struct lg_codec *c, enum lg_proto proto, uint64_t id,
	       const struct lg_expect *expect, uint32_t n, const char *in,
	       size_t len, struct lg_reply *out);

/* Appends the reply a correct server gives to checks with answers
 * expect[0..n), computed from the expected answers alone: for rpc the
 * CheckResponse.verdicts entries (tag, length, Verdict as protobuf-c packs
 * it), for the RESP forms the whole reply. */
int lg_expect_bytes(enum lg_proto proto, const struct lg_expect *expect,
		    uint32_t n, struct lg_buf *out);

/* The fast verdict on one reply: compares in[0..len) with the expected
 * bytes exp[0..exp_len) of lg_expect_bytes (rpc: after reading the frame,
 * the echoed id and the CheckResponse around the verdicts). Returns bytes
 * consumed when the reply is exactly the expected one, 0 when it is its
 * beginning so far (need more), LG_FAST_UNSURE when it differs, in which
 * case lg_decode must judge it. */
#define LG_FAST_UNSURE (-1L)
long lg_fast_verify(enum lg_proto proto, uint64_t id, const char *exp,
		    size_t exp_len, const char *in, size_t len);

/* The Redis form of a record (documented in bench/README.md):
 * key "c:BRAND:CHANNEL:RTYPE:RECIPIENT", value "STATUS:SOURCE:DATE", the
 * enums as their wire numbers, the date in Unix seconds. Return lengths. */
int lg_redis_key(const struct synth_record *rec, char *buf, size_t cap);
int lg_redis_value(uint8_t status, uint8_t source, int64_t consent_date,
		   char *buf, size_t cap);

/* ---- the request table (loadgen_reqs.c) --------------------------------
 * The requests of a run are drawn (lg_keys_next) and encoded once, at
 * start-up, with the bytes of their correct replies (lg_expect_bytes); a
 * run then copies a frame, patches its id, and checks each reply with one
 * memcmp, so the client costs little next to the server. A reply that does
 * not match byte for byte is decoded in full against the expected answers
 * (recomputed from the keys), which says what was wrong, and still
 * accepts a correct answer encoded differently. Shared and read-only
 * after lg_reqs_create. */

/* RPC ids are drawn from [2^49, 2^56): every such value is a minimal
 * varint of exactly 8 bytes, so the id is patched in place and the frame
 * stays canonical protobuf. */
#define LG_ID_BASE (1ull << 49)
#define LG_ID_END (1ull << 56)

struct lg_reqs;

struct lg_reqs_config {
	enum lg_proto proto;
	uint32_t batch;     /* checks per request */
	uint32_t count;     /* requests to prepare */
	uint64_t seed;      /* for the draws */
};

int lg_reqs_create(const struct lg_keys *keys, const struct lg_reqs_config *cfg,
		   struct lg_reqs **out);
void lg_reqs_destroy(struct lg_reqs *reqs);
uint32_t lg_reqs_count(const struct lg_reqs *reqs);
size_t lg_reqs_bytes(const struct lg_reqs *reqs); /* memory held */
/* Present keys among request r's checks. */
uint32_t lg_reqs_hits(const struct lg_reqs *reqs, uint32_t r);
/* Appends request r with the given id (rpc) to out. */
int lg_reqs_emit(const struct lg_reqs *reqs, uint32_t r, uint64_t id,
		 struct lg_buf *out);
/* Verifies one reply to request r (sent with id) at in[0..len), as
 * lg_decode does; full skips the byte comparison and always decodes.
 * scratch has room for batch answers. Returns bytes consumed, 0 for need
 * more, -EPROTO for bytes that are not a reply. */
long lg_reqs_verify(const struct lg_reqs *reqs, struct lg_codec *c,
		    uint32_t r, uint64_t id, bool full, struct lg_expect *scratch,
		    const char *in, size_t len, struct lg_reply *out);

#endif

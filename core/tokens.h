/*
 * tokens: partner principals from a token file (DESIGN §3.6, §5.2).
 * One principal per line: NAME SHA256HEX BRANDS [apply] [stats] [reject],
 * where SHA256HEX is the SHA-256 of the token, BRANDS is '*' or a
 * comma-separated list of brand codes, 'apply' allows the Apply RPC,
 * 'stats' the fleet-wide figures (record count, generation, every client's
 * checks) and 'reject' local rejections (DESIGN §11: Reject, REJECT,
 * POST /v1/reject), within BRANDS like every write;
 * the flags come in any order, each at most once; '#' starts a comment.
 * tokens_load refuses a malformed line with -EINVAL and a message naming
 * its line number. After load the set is immutable but for one counter per
 * principal (checks answered for it, relaxed atomics, each on its own
 * cache line): any thread may call tokens_authenticate, principal_may_*
 * and principal_*_checks. tokens_destroy frees it.
 */
#ifndef CONSENTD_CORE_TOKENS_H
#define CONSENTD_CORE_TOKENS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOKENS_NAME_MAX 63

struct principal {
	char name[TOKENS_NAME_MAX + 1];
	uint8_t digest[32];     /* SHA-256 of the token */
	bool all_brands;        /* BRANDS was '*' */
	bool may_apply;         /* the 'apply' flag */
	bool may_stats;         /* the 'stats' flag */
	bool may_reject;        /* the 'reject' flag */
	uint32_t *brands;       /* sorted, unique; n_brands of them */
	size_t n_brands;
	/* The one mutable part: checks answered for this principal. Points
	 * into the set's own counters (tokens_parse), never shared. */
	_Atomic uint64_t *checks;
};

struct tokens;

int tokens_load(const char *path, struct tokens **out, char *err, size_t err_cap);
/* Parses a token file's text (the same rules as tokens_load; for tests and
 * fuzzing). */
int tokens_parse(const char *text, size_t len, struct tokens **out,
		 char *err, size_t err_cap);
void tokens_destroy(struct tokens *t);

/* The principal whose digest equals SHA-256(token), or NULL. Compares the
 * digest with every principal's in constant time. */
const struct principal *tokens_authenticate(const struct tokens *t,
					    const char *token, size_t len);

/* True if p may check brand_code (p NULL means a trusted caller: true). */
bool principal_may_check(const struct principal *p, uint32_t brand_code);

/* True if p may see fleet-wide figures (the 'stats' flag; NULL: true).
 * Without it a stats reply holds liveness, p's own check count,
 * applied_sequence and data_as_of only: the record count and the other
 * clients' traffic are other customers' business. */
bool principal_may_stats(const struct principal *p);

/* True if p may take local rejections (the 'reject' flag; NULL: true).
 * The brand list still bounds them (principal_may_check, in
 * writer_submit). */
bool principal_may_reject(const struct principal *p);

/* Counts n checks answered for p (NULL: nothing) / reads the count. */
void principal_count_checks(const struct principal *p, uint64_t n);
uint64_t principal_checks(const struct principal *p);

#endif

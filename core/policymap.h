/*
 * policymap: who is sending, for the Postfix policy port (DESIGN §11). A
 * map file turns a SASL user, a sender address or a sender domain into the
 * brand (and purpose) its mail is checked under. One entry per line:
 *     KEY BRAND [TICARI|BILGILENDIRME]
 * KEY is an address "user@example.com", a domain "@example.com" or
 * "example.com", or "sasl:USERNAME"; BRAND a brand code (1-8 digits, not
 * 0); the purpose defaults to TICARI. '#' starts a comment.
 * policymap_load refuses a bad line with -EINVAL and a message naming its
 * line number. After load the map is immutable: any thread may call
 * policymap_lookup (no allocation; the rule returned is the map's).
 * policymap_destroy frees it.
 */
#ifndef CONSENTD_CORE_POLICYMAP_H
#define CONSENTD_CORE_POLICYMAP_H

#include <stddef.h>
#include <stdint.h>

#define POLICYMAP_KEY_MAX 256 /* bytes of a key after its "sasl:" or '@' */

/* Which kind of key a rule has (also the lookup precedence: lower first). */
enum policymap_kind {
	POLICYMAP_SASL = 1,    /* sasl:USERNAME, compared exactly */
	POLICYMAP_ADDRESS = 2, /* user@example.com, lower-cased */
	POLICYMAP_DOMAIN = 3,  /* example.com, lower-cased; no subdomains */
};

struct policymap_rule {
	enum policymap_kind kind;
	uint32_t brand_code;
	int purpose;  /* enum purpose: TICARI or BILGILENDIRME, never 0 */
	size_t line;  /* where it came from, for logs */
};

struct policymap;

int policymap_load(const char *path, struct policymap **out, char *err,
		   size_t err_cap);
/* Parses a map file's text (the rules of policymap_load; for tests and
 * fuzzing). An empty map is allowed (every sender unmapped). */
int policymap_parse(const char *text, size_t len, struct policymap **out,
		    char *err, size_t err_cap);
void policymap_destroy(struct policymap *m);

size_t policymap_count(const struct policymap *m);

/* The rule for a message: sasl_username's (if non-empty), else the
 * sender address's, else the sender's domain's (the part after its last
 * '@'); addresses and domains compare without case. NULL: unmapped. */
const struct policymap_rule *policymap_lookup(const struct policymap *m,
					      const char *sasl,
					      size_t sasl_len,
					      const char *sender,
					      size_t sender_len);

#endif

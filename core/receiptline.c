/*
 * receiptline: see receiptline.h. The fields are split first and each one
 * is judged whole, so a message names the field by its place and name.
 */
#include "core/receiptline.h"

#include <errno.h>
#include <string.h>

#include "core/enums.h"
#include "core/errmsg.h"

static const char *const field_names[RECEIPTLINE_FIELDS] = {
	"recipient", "brand", "channel", "type", "sequence",
};

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* A decimal of 1-20 digits that fits max; -1 when it is not one. */
static int parse_decimal(const char *s, size_t len, uint64_t max,
			 uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 20)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (max - d) / 10)
			return -1;
		v = v * 10 + d;
	}
	*out = v;
	return 0;
}

static int bad(char *err, size_t err_cap, int field, const char *what,
	       const char *s, size_t len)
{
	/* Quote at most 64 bytes of the field: the message stays one line. */
	int n = len > 64 ? 64 : (int)len;

	for (int i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
			n = i;
	return errmsg_fail(err, err_cap, -EINVAL, "field %d (%s): '%.*s'%s %s",
			   field + 1, field_names[field], n, s,
			   (size_t)n < len ? "..." : "", what);
}

int receiptline_parse(const char *line, size_t len, struct receiptline *out,
		      char *err, size_t err_cap)
{
	const char *f[RECEIPTLINE_FIELDS];
	size_t flen[RECEIPTLINE_FIELDS];
	struct recipient rcpt;
	const char *why = NULL;
	uint64_t v;
	size_t i = 0;
	int n = 0;

	errmsg_set(err, err_cap, "%s", "");
	if (len > RECEIPTLINE_MAX)
		return errmsg_fail(err, err_cap, -EINVAL,
				   "line longer than %u bytes", RECEIPTLINE_MAX);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	while (i < len && is_blank(line[i]))
		i++;
	if (i == len || line[i] == '#')
		return 0;
	while (i < len) {
		size_t start = i;
		while (i < len && !is_blank(line[i]))
			i++;
		if (n == RECEIPTLINE_FIELDS)
			return errmsg_fail(err, err_cap, -EINVAL,
					   "more than %d fields (RECIPIENT BRAND "
					   "CHANNEL TYPE SEQUENCE)",
					   RECEIPTLINE_FIELDS);
		f[n] = line + start;
		flen[n++] = i - start;
		while (i < len && is_blank(line[i]))
			i++;
	}
	if (n < RECEIPTLINE_FIELDS)
		return errmsg_fail(err, err_cap, -EINVAL,
				   "%d field%s, want %d (RECIPIENT BRAND CHANNEL "
				   "TYPE SEQUENCE); field %d (%s) is missing",
				   n, n == 1 ? "" : "s", RECEIPTLINE_FIELDS,
				   n + 1, field_names[n]);
	for (int k = 0; k < RECEIPTLINE_FIELDS; k++)
		for (size_t j = 0; j < flen[k]; j++)
			if ((unsigned char)f[k][j] < 0x20 ||
			    (unsigned char)f[k][j] == 0x7f)
				return bad(err, err_cap, k,
					   "holds a control character", f[k],
					   flen[k]);

	if (recipient_normalize(f[0], flen[0], &rcpt, &why) < 0)
		return bad(err, err_cap, 0, why ? why : "does not normalise",
			   f[0], flen[0]);
	if (parse_decimal(f[1], flen[1], RECEIPTLINE_BRAND_MAX, &v) < 0 ||
	    v == 0)
		return bad(err, err_cap, 1, "is not a brand code (1-99999999)",
			   f[1], flen[1]);
	int channel = enums_channel_parse(f[2], flen[2]);
	if (channel == CHANNEL_NONE)
		return bad(err, err_cap, 2, "is not ARAMA, MESAJ or EPOSTA",
			   f[2], flen[2]);
	if ((channel == CHANNEL_EPOSTA) != (rcpt.kind == RECIPIENT_EMAIL))
		return bad(err, err_cap, 2,
			   channel == CHANNEL_EPOSTA
				   ? "wants an e-mail recipient"
				   : "wants a phone recipient",
			   f[2], flen[2]);
	int rtype = enums_rtype_parse(f[3], flen[3]);
	if (rtype == RTYPE_NONE)
		return bad(err, err_cap, 3, "is not BIREYSEL or TACIR", f[3],
			   flen[3]);
	uint64_t seq;
	if (parse_decimal(f[4], flen[4], UINT64_MAX, &seq) < 0 || seq == 0)
		return bad(err, err_cap, 4,
			   "is not an applied_sequence (a decimal above 0)",
			   f[4], flen[4]);

	if (recipient_format(&rcpt, out->recipient, sizeof(out->recipient)) < 0)
		return bad(err, err_cap, 0, "does not fit", f[0], flen[0]);
	out->brand_code = (uint32_t)v;
	out->channel = channel;
	out->recipient_type = rtype;
	out->sequence = seq;
	return 1;
}

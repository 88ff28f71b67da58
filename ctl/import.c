/*
 * import: İYS's own change formats to a change stream (DESIGN §3.5, §3.6):
 *   consentctl import-csv  --brand B [--iys-code I] [--skip-bad]
 *                          [--from-sequence Q] FILE --out FILE
 *   consentctl import-json (same flags)
 *
 * Both read records of one brand (İYS's files and pull pages carry no
 * brandCode: --brand says whose they are) and write a change stream whose
 * header has changes=true and sequence Q (default 0), with the records
 * numbered Q+1, Q+2, ... in input order. Input order is kept: İYS orders
 * its daily files and pull pages by creationDate, and reordering would
 * only hide a problem (a creationDate going backwards is counted and
 * reported on stderr, not an error).
 *
 * Each record: dates "YYYY-MM-DD HH:mm:ss" Turkey time (core/tztime.h) to
 * Unix seconds UTC; recipient normalised and stored canonically;
 * recipientType, type, status by name, any case ("RED" is taken as RET:
 * some İYS clients write it); source open (empty: unspecified, unknown:
 * SOURCE_OTHER); consentDate may be empty only for a TACIR record (İYS
 * allows that) and then takes the creationDate, so a merchant's RET is
 * never dropped for want of a date; transactionId may be empty. Then
 * consent_validate (core/stream.h). A bad record is reported with its line
 * (CSV, 1-based, the header is line 1) or list index (JSON) and field, and
 * fails the import unless --skip-bad, which skips and counts it.
 *
 * CSV (decisions, since İYS documents none): a UTF-8 BOM is skipped; lines
 * end in LF or CRLF; the last line may lack its end; blank lines are
 * skipped. The first line is the header: column names matched without
 * regard to case or order (extra columns are ignored, all eight are
 * required), and the delimiter is ';' if the header has more ';' than ','
 * else ','. Fields follow RFC 4180 quoting: a field that starts with '"'
 * ends at the next lone '"', "" inside it is one '"', and it may hold the
 * delimiter but not a line break (a record is one line). Unquoted fields
 * are trimmed of spaces and tabs and may not contain '"'. Lines are at
 * most IMPORT_LINE_MAX bytes. A bad header fails the import always.
 *
 * JSON: the pull API's page {"after": ..., "list": [ {recipient, type,
 * source, status, consentDate, recipientType, creationDate, transactionId,
 * ...}, ... ]} (other keys ignored; a missing key is an empty value), or a
 * bare list; a file may hold several pages one after another, as a puller
 * appending each response writes. The last page's "after" is printed so
 * the next pull can start there. Input is read whole (at most
 * IMPORT_JSON_MAX bytes).
 *
 * The parsers take buffers and callbacks so fuzz/csv_fuzz.c and
 * fuzz/json_import_fuzz.c can drive them: they include this file with
 * IMPORT_PARSERS_ONLY defined, which leaves out the commands.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/enums.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/tztime.h"
#include "ctl/ctl.h"

#define IMPORT_LINE_MAX (64u << 10)
#define IMPORT_COLUMNS_MAX 64
#define IMPORT_TX_MAX 256
#define IMPORT_JSON_MAX (256u << 20)
#define IMPORT_BAD_SHOWN 100 /* --skip-bad: rows reported one by one */
#define IMPORT_READ_CHUNK (64u << 10)

/* The İYS fields, in the daily file's documented column order. */
enum import_field {
	F_CREATION_DATE,
	F_TRANSACTION_ID,
	F_RECIPIENT,
	F_RECIPIENT_TYPE,
	F_TYPE,
	F_STATUS,
	F_CONSENT_DATE,
	F_SOURCE,
	IMPORT_N_FIELDS
};

static const char *const import_field_names[IMPORT_N_FIELDS] = {
	"creationDate", "transactionId", "recipient", "recipientType",
	"type", "status", "consentDate", "source",
};

/* A field's text, not NUL-terminated; p may be NULL when len is 0. */
struct import_text {
	const char *p;
	size_t len;
};

/* One record built from texts: the Consent points into this struct. */
struct import_record {
	Consent__V1__Consent c;
	char recipient[RECIPIENT_TEXT_MAX];
	char tx[IMPORT_TX_MAX + 1];
};

struct import_opts {
	uint32_t brand_code;
	uint32_t iys_code;
	bool skip_bad;
	uint64_t first_sequence; /* records are numbered from this + 1 */
	FILE *diag;              /* skipped rows are reported here; NULL: not */
};

struct import_counts {
	uint64_t records;      /* emitted */
	uint64_t bad;          /* skipped (--skip-bad) */
	uint64_t backwards;    /* creationDate earlier than the record before */
	int64_t last_creation; /* of the last record emitted */
};

/* Receives each record, its sequence set; < 0 stops the import. */
typedef int (*import_emit_fn)(void *arg, const Consent__V1__Consent *c);
/* Reads up to cap bytes: > 0 bytes, 0 at the end, < 0 -errno. */
typedef ssize_t (*import_read_fn)(void *arg, char *buf, size_t cap);

int import_record_build(const struct import_text f[IMPORT_N_FIELDS],
			uint32_t brand_code, uint32_t iys_code,
			struct import_record *out, const char **field,
			const char **why);
int import_csv_run(const struct import_opts *o, import_read_fn rd,
		   void *rd_arg, import_emit_fn emit, void *emit_arg,
		   struct import_counts *counts, char *err, size_t err_cap);
int import_json_run(const struct import_opts *o, const char *buf, size_t len,
		    import_emit_fn emit, void *emit_arg,
		    struct import_counts *counts, char *after, size_t after_cap,
		    char *err, size_t err_cap);

static void import_err(char *err, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void import_err(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;

	if (!err || !cap)
		return;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
}

/* ---- one record ---- */

static int parse_date(const struct import_text *t, int64_t *out,
		      const char **why)
{
	return tztime_parse(t->p ? t->p : "", t->len, out, why);
}

int import_record_build(const struct import_text f[IMPORT_N_FIELDS],
			uint32_t brand_code, uint32_t iys_code,
			struct import_record *out, const char **field,
			const char **why)
{
	Consent__V1__Consent *c = &out->c;
	const struct import_text *t;
	struct recipient r;
	int v;

	consent__v1__consent__init(c);
	c->brand_code = brand_code;
	c->iys_code = iys_code;

	t = &f[F_RECIPIENT];
	*field = import_field_names[F_RECIPIENT];
	if (t->len == 0) {
		*why = "empty";
		return -EINVAL;
	}
	if (t->len >= RECIPIENT_TEXT_MAX) {
		*why = "too long";
		return -EINVAL;
	}
	if (memchr(t->p, 0, t->len)) {
		*why = "contains a NUL byte";
		return -EINVAL;
	}
	memcpy(out->recipient, t->p, t->len);
	out->recipient[t->len] = '\0';
	c->recipient = out->recipient;

	t = &f[F_TYPE];
	*field = import_field_names[F_TYPE];
	v = enums_channel_parse(t->p, t->len);
	if (!v) {
		*why = t->len ? "not ARAMA, MESAJ or EPOSTA" : "empty";
		return -EINVAL;
	}
	c->channel = v;

	t = &f[F_RECIPIENT_TYPE];
	*field = import_field_names[F_RECIPIENT_TYPE];
	v = enums_rtype_parse(t->p, t->len);
	if (!v) {
		*why = t->len ? "not BIREYSEL or TACIR" : "empty";
		return -EINVAL;
	}
	c->recipient_type = v;

	t = &f[F_STATUS];
	*field = import_field_names[F_STATUS];
	v = enums_status_parse(t->p, t->len);
	if (!v && t->len == 3 && strncasecmp(t->p, "RED", 3) == 0)
		v = STATUS_RET;
	if (!v) {
		*why = t->len ? "not ONAY or RET" : "empty";
		return -EINVAL;
	}
	c->status = v;

	/* Open: empty is unspecified, an unknown name SOURCE_OTHER. */
	c->source = enums_source_parse(f[F_SOURCE].p, f[F_SOURCE].len);

	*field = import_field_names[F_CREATION_DATE];
	if (f[F_CREATION_DATE].len == 0) {
		*why = "empty";
		return -EINVAL;
	}
	if (parse_date(&f[F_CREATION_DATE], &c->creation_date, why) < 0)
		return -EINVAL;

	*field = import_field_names[F_CONSENT_DATE];
	if (f[F_CONSENT_DATE].len == 0) {
		if ((int)c->recipient_type != RTYPE_TACIR) {
			*why = "empty (only a TACIR record may omit it)";
			return -EINVAL;
		}
		c->consent_date = c->creation_date;
	} else if (parse_date(&f[F_CONSENT_DATE], &c->consent_date, why) < 0) {
		return -EINVAL;
	}

	t = &f[F_TRANSACTION_ID];
	*field = import_field_names[F_TRANSACTION_ID];
	if (t->len > IMPORT_TX_MAX) {
		*why = "longer than 256 bytes";
		return -EINVAL;
	}
	if (t->len && memchr(t->p, 0, t->len)) {
		*why = "contains a NUL byte";
		return -EINVAL;
	}
	if (t->len)
		memcpy(out->tx, t->p, t->len);
	out->tx[t->len] = '\0';
	c->transaction_id = out->tx;

	/* The whole record's meaning; its field names are the schema's. */
	if (consent_validate(c, &r, field, why) < 0)
		return -EINVAL;
	/* Store the canonical recipient ("+905321234567", lower-case mail). */
	if (recipient_format(&r, out->recipient, sizeof(out->recipient)) < 0) {
		*field = import_field_names[F_RECIPIENT];
		*why = "does not format";
		return -EINVAL;
	}
	*field = NULL;
	*why = NULL;
	return 0;
}

/* Numbers the record, tracks creationDate order and hands it on. */
static int import_emit(const struct import_opts *o, struct import_counts *k,
		       Consent__V1__Consent *c, import_emit_fn emit, void *arg,
		       char *err, size_t err_cap)
{
	if (o->first_sequence + k->records + 1 <= o->first_sequence) {
		import_err(err, err_cap, "sequence overflows 64 bits");
		return -EOVERFLOW;
	}
	c->sequence = o->first_sequence + k->records + 1;
	if (k->records && c->creation_date < k->last_creation)
		k->backwards++;
	k->last_creation = c->creation_date;
	k->records++;
	return emit(arg, c);
}

/* A bad record: fatal, or reported and counted with --skip-bad. */
static int import_bad(const struct import_opts *o, struct import_counts *k,
		      const char *where, const char *field, const char *why,
		      char *err, size_t err_cap)
{
	if (!o->skip_bad) {
		import_err(err, err_cap, "%s: %s: %s", where, field, why);
		return -EINVAL;
	}
	k->bad++;
	if (o->diag && k->bad <= IMPORT_BAD_SHOWN)
		fprintf(o->diag, "%s: %s: %s: skipped\n", where, field, why);
	if (o->diag && k->bad == IMPORT_BAD_SHOWN + 1)
		fprintf(o->diag, "(further bad records are counted, not shown)\n");
	return 0;
}

/* ---- CSV ---- */

struct csv_state {
	char delim;
	bool have_header;
	int n_columns;                 /* in the header */
	int col[IMPORT_N_FIELDS];      /* header column of each field */
	char scratch[IMPORT_LINE_MAX]; /* unquoted field bytes */
};

static bool csv_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/*
 * Splits line[0..len) (no line end) into at most IMPORT_COLUMNS_MAX fields.
 * Quoted fields are copied, unescaped, into st->scratch (never longer than
 * the line). Returns the number of fields or -EINVAL with *why.
 */
static int csv_split(struct csv_state *st, const char *line, size_t len,
		     struct import_text *cols, const char **why)
{
	size_t i = 0, used = 0;
	int n = 0;

	for (;;) {
		struct import_text t = { line + i, 0 };

		if (n == IMPORT_COLUMNS_MAX) {
			*why = "more than 64 columns";
			return -EINVAL;
		}
		if (i < len && line[i] == '"') {
			char *out = st->scratch + used;
			size_t o = 0;

			i++;
			for (;;) {
				if (i >= len) {
					*why = "unterminated quote (a field may not span lines)";
					return -EINVAL;
				}
				if (line[i] == '"') {
					if (i + 1 < len && line[i + 1] == '"') {
						out[o++] = '"';
						i += 2;
						continue;
					}
					i++;
					break;
				}
				out[o++] = line[i++];
			}
			while (i < len && csv_blank(line[i]))
				i++;
			if (i < len && line[i] != st->delim) {
				*why = "text after a closing quote";
				return -EINVAL;
			}
			t.p = out;
			t.len = o;
			used += o;
		} else {
			size_t start = i, end;

			while (i < len && line[i] != st->delim) {
				if (line[i] == '"') {
					*why = "a quote inside an unquoted field";
					return -EINVAL;
				}
				i++;
			}
			end = i;
			while (start < end && csv_blank(line[start]))
				start++;
			while (end > start && csv_blank(line[end - 1]))
				end--;
			t.p = line + start;
			t.len = end - start;
		}
		cols[n++] = t;
		if (i >= len)
			return n;
		i++; /* the delimiter */
	}
}

static bool text_is(const struct import_text *t, const char *name)
{
	return t->len == strlen(name) && strncasecmp(t->p, name, t->len) == 0;
}

static int csv_header(struct csv_state *st, const char *line, size_t len,
		      uint64_t line_no, char *err, size_t err_cap)
{
	struct import_text cols[IMPORT_COLUMNS_MAX];
	size_t commas = 0, semis = 0;
	const char *why;
	int n;

	for (size_t i = 0; i < len; i++) {
		commas += line[i] == ',';
		semis += line[i] == ';';
	}
	st->delim = semis > commas ? ';' : ',';
	n = csv_split(st, line, len, cols, &why);
	if (n < 0) {
		import_err(err, err_cap, "line %" PRIu64 ": header: %s", line_no,
			   why);
		return -EPROTO;
	}
	for (int f = 0; f < IMPORT_N_FIELDS; f++)
		st->col[f] = -1;
	for (int c = 0; c < n; c++) {
		for (int f = 0; f < IMPORT_N_FIELDS; f++) {
			if (!text_is(&cols[c], import_field_names[f]))
				continue;
			if (st->col[f] >= 0) {
				import_err(err, err_cap,
					   "line %" PRIu64 ": header: column %s twice",
					   line_no, import_field_names[f]);
				return -EPROTO;
			}
			st->col[f] = c;
		}
	}
	for (int f = 0; f < IMPORT_N_FIELDS; f++) {
		if (st->col[f] < 0) {
			import_err(err, err_cap,
				   "line %" PRIu64 ": header lacks column %s (the "
				   "first line must name the columns)",
				   line_no, import_field_names[f]);
			return -EPROTO;
		}
	}
	st->n_columns = n;
	st->have_header = true;
	return 0;
}

/*
 * One line (without its end). Returns 1 with *rec filled, 0 for the
 * header or a blank line, -EINVAL for a bad row (*field, *why), or -EPROTO
 * for a bad header (message in err).
 */
static int csv_line(struct csv_state *st, const struct import_opts *o,
		    uint64_t line_no, const char *line, size_t len,
		    struct import_record *rec,
		    const char **field, const char **why, char *err,
		    size_t err_cap)
{
	struct import_text cols[IMPORT_COLUMNS_MAX];
	struct import_text f[IMPORT_N_FIELDS];
	size_t k = 0;
	int n;

	while (k < len && csv_blank(line[k]))
		k++;
	if (k == len)
		return 0;
	if (!st->have_header)
		return csv_header(st, line, len, line_no, err, err_cap);
	n = csv_split(st, line, len, cols, why);
	if (n < 0) {
		*field = "row";
		return -EINVAL;
	}
	if (n != st->n_columns) {
		*field = "row";
		*why = n < st->n_columns ? "fewer columns than the header" :
					   "more columns than the header";
		return -EINVAL;
	}
	for (int i = 0; i < IMPORT_N_FIELDS; i++)
		f[i] = cols[st->col[i]];
	if (import_record_build(f, o->brand_code, o->iys_code, rec, field,
				why) < 0)
		return -EINVAL;
	return 1;
}

int import_csv_run(const struct import_opts *o, import_read_fn rd,
		   void *rd_arg, import_emit_fn emit, void *emit_arg,
		   struct import_counts *counts, char *err, size_t err_cap)
{
	struct csv_state *st = calloc(1, sizeof(*st));
	struct import_record *rec = malloc(sizeof(*rec));
	size_t cap = IMPORT_LINE_MAX + IMPORT_READ_CHUNK;
	char *buf = malloc(cap);
	size_t have = 0, pos = 0;
	uint64_t line_no = 0;
	bool eof = false, overlong = false;
	int rc = 0;

	memset(counts, 0, sizeof(*counts));
	if (!st || !rec || !buf) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		char *nl = memchr(buf + pos, '\n', have - pos);
		size_t len;

		if (!nl && !eof && have - pos < IMPORT_LINE_MAX + 1) {
			/* Need more: slide the partial line to the front. */
			memmove(buf, buf + pos, have - pos);
			have -= pos;
			pos = 0;
			ssize_t r = rd(rd_arg, buf + have, cap - have);

			if (r < 0) {
				rc = (int)r;
				import_err(err, err_cap, "read: %s", strerror(-rc));
				goto out;
			}
			if (r == 0)
				eof = true;
			have += (size_t)r;
			continue;
		}
		if (!nl && pos == have)
			break; /* the end, on a line boundary */
		len = nl ? (size_t)(nl - (buf + pos)) : have - pos;
		if (len > IMPORT_LINE_MAX || overlong) {
			/* Report once, then drop bytes up to the line's end. */
			if (!overlong) {
				line_no++;
				char where[48];

				snprintf(where, sizeof(where), "line %" PRIu64, line_no);
				if (!st->have_header) {
					import_err(err, err_cap,
						   "%s: header longer than %u bytes",
						   where, IMPORT_LINE_MAX);
					rc = -EPROTO;
					goto out;
				}
				rc = import_bad(o, counts, where, "row",
						"longer than 65536 bytes", err,
						err_cap);
				if (rc < 0)
					goto out;
			}
			overlong = !nl;
			pos = nl ? (size_t)(nl - buf) + 1 : have;
			continue;
		}
		line_no++;
		const char *line = buf + pos;

		pos += len + (nl != NULL);
		if (len && line[len - 1] == '\r')
			len--;
		if (line_no == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
			line += 3;
			len -= 3;
		}
		const char *field = NULL, *why = NULL;
		char where[48];
		int r = csv_line(st, o, line_no, line, len, rec, &field, &why,
				 err, err_cap);

		if (r == -EPROTO) {
			rc = r;
			goto out;
		}
		if (r < 0) {
			snprintf(where, sizeof(where), "line %" PRIu64, line_no);
			rc = import_bad(o, counts, where, field, why, err, err_cap);
			if (rc < 0)
				goto out;
			continue;
		}
		if (r == 1) {
			rc = import_emit(o, counts, &rec->c, emit, emit_arg, err,
					 err_cap);
			if (rc < 0)
				goto out;
		}
	}
	if (!st->have_header) {
		import_err(err, err_cap, "no header line (the input is empty)");
		rc = -EPROTO;
	}
out:
	free(buf);
	free(rec);
	free(st);
	return rc;
}

/* ---- JSON ---- */

/* The text of a string member; a missing or null member is empty. */
static int json_text(json_t *obj, const char *key, struct import_text *t)
{
	json_t *v = json_object_get(obj, key);

	t->p = NULL;
	t->len = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return -EINVAL;
	t->p = json_string_value(v);
	t->len = json_string_length(v);
	return 0;
}

static int json_page(const struct import_opts *o, json_t *page, int page_no,
		     import_emit_fn emit, void *emit_arg,
		     struct import_counts *counts, struct import_record *rec,
		     char *after, size_t after_cap, char *err, size_t err_cap)
{
	char prefix[32] = "";
	json_t *list = page;
	size_t i;
	json_t *item;

	if (page_no > 1)
		snprintf(prefix, sizeof(prefix), "page %d ", page_no);
	if (json_is_object(page)) {
		json_t *a = json_object_get(page, "after");

		list = json_object_get(page, "list");
		if (!json_is_array(list)) {
			import_err(err, err_cap, "%s\"list\": %s", prefix,
				   list ? "not an array" : "missing");
			return -EPROTO;
		}
		if (a && !json_is_string(a) && !json_is_null(a) &&
		    !json_is_integer(a)) {
			import_err(err, err_cap,
				   "%s\"after\": not a string or number", prefix);
			return -EPROTO;
		}
		if (after && after_cap && json_is_string(a))
			snprintf(after, after_cap, "%s", json_string_value(a));
		else if (after && after_cap && json_is_integer(a))
			snprintf(after, after_cap, "%" JSON_INTEGER_FORMAT,
				 json_integer_value(a));
	} else if (!json_is_array(page)) {
		import_err(err, err_cap, "%snot a page object or a list", prefix);
		return -EPROTO;
	}
	json_array_foreach(list, i, item) {
		struct import_text f[IMPORT_N_FIELDS];
		const char *field = NULL, *why = NULL;
		char where[64];
		int rc = 0;

		snprintf(where, sizeof(where), "%slist[%zu]", prefix, i);
		if (!json_is_object(item)) {
			field = "record";
			why = "not an object";
			rc = -EINVAL;
		}
		for (int k = 0; rc == 0 && k < IMPORT_N_FIELDS; k++) {
			if (json_text(item, import_field_names[k], &f[k]) < 0) {
				field = import_field_names[k];
				why = "not a string";
				rc = -EINVAL;
			}
		}
		if (rc == 0)
			rc = import_record_build(f, o->brand_code, o->iys_code,
						 rec, &field, &why);
		if (rc < 0) {
			rc = import_bad(o, counts, where, field, why, err, err_cap);
			if (rc < 0)
				return rc;
			continue;
		}
		rc = import_emit(o, counts, &rec->c, emit, emit_arg, err, err_cap);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int import_json_run(const struct import_opts *o, const char *buf, size_t len,
		    import_emit_fn emit, void *emit_arg,
		    struct import_counts *counts, char *after, size_t after_cap,
		    char *err, size_t err_cap)
{
	struct import_record *rec = malloc(sizeof(*rec));
	size_t pos = 0;
	int page_no = 0, rc = 0;

	memset(counts, 0, sizeof(*counts));
	if (after && after_cap)
		after[0] = '\0';
	if (!rec)
		return -ENOMEM;
	if (len > IMPORT_JSON_MAX) {
		import_err(err, err_cap, "input over %u bytes", IMPORT_JSON_MAX);
		rc = -EMSGSIZE;
		goto out;
	}
	for (;;) {
		while (pos < len && (buf[pos] == ' ' || buf[pos] == '\t' ||
				     buf[pos] == '\n' || buf[pos] == '\r'))
			pos++;
		if (pos == len)
			break;
		json_error_t je;
		json_t *page = json_loadb(buf + pos, len - pos,
					  JSON_DISABLE_EOF_CHECK |
						  JSON_REJECT_DUPLICATES, &je);

		page_no++;
		if (!page) {
			import_err(err, err_cap,
				   "page %d: byte %zu: %s", page_no,
				   pos + (size_t)(je.position > 0 ? je.position : 0),
				   je.text);
			rc = -EPROTO;
			goto out;
		}
		/* With JSON_DISABLE_EOF_CHECK, position is the bytes read. */
		if (je.position <= 0 || (size_t)je.position > len - pos) {
			json_decref(page);
			import_err(err, err_cap, "page %d: parser position lost",
				   page_no);
			rc = -EPROTO;
			goto out;
		}
		pos += (size_t)je.position;
		rc = json_page(o, page, page_no, emit, emit_arg, counts, rec,
			       after, after_cap, err, err_cap);
		json_decref(page);
		if (rc < 0)
			goto out;
	}
	if (page_no == 0) {
		import_err(err, err_cap, "no JSON page (the input is empty)");
		rc = -EPROTO;
	}
out:
	free(rec);
	return rc;
}

#ifndef IMPORT_PARSERS_ONLY

/* ---- the commands ---- */

struct import_args {
	const char *in;
	const char *out;
	struct import_opts opts;
};

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int import_usage(const char *cmd)
{
	fprintf(stderr,
		"usage: consentctl %s --brand B [--iys-code I] [--skip-bad] "
		"[--from-sequence Q] FILE --out FILE\n", cmd);
	return 2;
}

static int import_parse_args(int argc, char **argv, struct import_args *a)
{
	uint64_t v;
	bool have_brand = false;

	memset(a, 0, sizeof(*a));
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(arg, "--brand") == 0) {
			if (parse_u64(val, 99999999, &v) < 0 || v == 0) {
				fprintf(stderr, "%s: --brand wants 1..99999999\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.brand_code = (uint32_t)v;
			have_brand = true;
			i++;
		} else if (strcmp(arg, "--iys-code") == 0) {
			if (parse_u64(val, UINT32_MAX, &v) < 0) {
				fprintf(stderr, "%s: --iys-code wants a number\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.iys_code = (uint32_t)v;
			i++;
		} else if (strcmp(arg, "--from-sequence") == 0) {
			if (parse_u64(val, UINT64_MAX, &v) < 0) {
				fprintf(stderr,
					"%s: --from-sequence wants a number\n",
					argv[0]);
				return -EINVAL;
			}
			a->opts.first_sequence = v;
			i++;
		} else if (strcmp(arg, "--out") == 0 && val) {
			a->out = val;
			i++;
		} else if (strcmp(arg, "--skip-bad") == 0) {
			a->opts.skip_bad = true;
		} else if (arg[0] == '-' && arg[1] != '\0') {
			fprintf(stderr, "%s: unknown option %s\n", argv[0], arg);
			return -EINVAL;
		} else if (!a->in) {
			a->in = arg;
		} else {
			fprintf(stderr, "%s: one input file only\n", argv[0]);
			return -EINVAL;
		}
	}
	if (!have_brand || !a->in || !a->out)
		return -EINVAL;
	a->opts.diag = stderr;
	return 0;
}

/* The output: the stream goes to a temp file beside FILE that is renamed
 * over it only when the import succeeded (DESIGN §5.1), or to stdout. */
struct import_out {
	const char *path;
	char tmp[PATH_MAX];
	int fd;
	struct stream_writer *w;
};

static int import_out_open(struct import_out *out, const char *path,
			   const char *origin, uint64_t sequence)
{
	Consent__V1__StreamHeader h = CONSENT__V1__STREAM_HEADER__INIT;
	int rc;

	out->path = path;
	out->tmp[0] = '\0';
	out->w = NULL;
	if (strcmp(path, "-") == 0) {
		out->fd = STDOUT_FILENO;
	} else {
		if ((size_t)snprintf(out->tmp, sizeof(out->tmp), "%s.tmp.%d",
				     path, (int)getpid()) >= sizeof(out->tmp)) {
			out->tmp[0] = '\0';
			return -ENAMETOOLONG;
		}
		out->fd = open(out->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			       0644);
		if (out->fd < 0) {
			rc = -errno;
			out->tmp[0] = '\0';
			return rc;
		}
	}
	h.format_version = STREAM_FORMAT_VERSION;
	h.changes = true;
	h.sequence = sequence;
	h.created_at = (int64_t)time(NULL);
	h.origin = (char *)origin;
	return stream_writer_create(out->fd, &h, 0, &out->w);
}

static void import_out_abandon(struct import_out *out)
{
	if (out->w)
		stream_writer_destroy(out->w);
	out->w = NULL;
	if (out->tmp[0]) {
		close(out->fd);
		unlink(out->tmp);
	}
}

static int import_out_finish(struct import_out *out)
{
	int rc = stream_writer_finish(out->w);

	out->w = NULL;
	if (rc < 0 || !out->tmp[0]) {
		if (rc < 0)
			import_out_abandon(out);
		return rc;
	}
	if (fsync(out->fd) < 0) {
		rc = -errno;
		import_out_abandon(out);
		return rc;
	}
	close(out->fd);
	if (rename(out->tmp, out->path) < 0) {
		rc = -errno;
		unlink(out->tmp);
		return rc;
	}
	/* The rename is durable once the directory is synced. */
	char dir[PATH_MAX];
	const char *slash = strrchr(out->path, '/');

	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == out->path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - out->path),
			 out->path);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd < 0)
		return -errno;
	rc = fsync(dfd) < 0 ? -errno : 0;
	close(dfd);
	return rc;
}

static int emit_to_writer(void *arg, const Consent__V1__Consent *c)
{
	return stream_writer_add(arg, c);
}

static ssize_t read_fd(void *arg, char *buf, size_t cap)
{
	int fd = *(int *)arg;

	for (;;) {
		ssize_t r = read(fd, buf, cap);

		if (r >= 0 || errno != EINTR)
			return r < 0 ? -errno : r;
	}
}

/* The whole of fd in memory, at most max bytes. */
static int read_all(int fd, size_t max, char **out, size_t *len)
{
	size_t cap = 1u << 20, n = 0;
	char *buf = malloc(cap);

	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				free(buf);
				return -EMSGSIZE;
			}
			char *nb = realloc(buf, cap * 2);

			if (!nb) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = read_fd(&fd, buf + n, cap - n);

		if (r < 0) {
			free(buf);
			return (int)r;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > max) {
		free(buf);
		return -EMSGSIZE;
	}
	*out = buf;
	*len = n;
	return 0;
}

static int import_main(int argc, char **argv, bool json)
{
	struct import_args a;
	struct import_counts k;
	struct import_out out;
	char origin[128], err[512] = "", after[256] = "";
	int in_fd, rc;

	if (import_parse_args(argc, argv, &a) < 0)
		return import_usage(argv[0]);
	in_fd = ctl_open_in(a.in);
	if (in_fd < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.in, strerror(-in_fd));
		return 1;
	}
	snprintf(origin, sizeof(origin), "iys-%s brand=%" PRIu32,
		 json ? "json" : "csv", a.opts.brand_code);
	rc = import_out_open(&out, a.out, origin, a.opts.first_sequence);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.out, strerror(-rc));
		import_out_abandon(&out);
		if (in_fd != STDIN_FILENO)
			close(in_fd);
		return 1;
	}
	if (json) {
		char *buf = NULL;
		size_t len = 0;

		rc = read_all(in_fd, IMPORT_JSON_MAX, &buf, &len);
		if (rc < 0)
			snprintf(err, sizeof(err), "read: %s", strerror(-rc));
		else
			rc = import_json_run(&a.opts, buf, len, emit_to_writer,
					     out.w, &k, after, sizeof(after), err,
					     sizeof(err));
		free(buf);
	} else {
		rc = import_csv_run(&a.opts, read_fd, &in_fd, emit_to_writer,
				    out.w, &k, err, sizeof(err));
	}
	if (in_fd != STDIN_FILENO)
		close(in_fd);
	if (rc < 0) {
		if (!err[0])
			snprintf(err, sizeof(err), "%s", strerror(-rc));
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.in, err);
		import_out_abandon(&out);
		return 1;
	}
	rc = import_out_finish(&out);
	if (rc < 0) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], a.out, strerror(-rc));
		return 1;
	}
	fprintf(stderr, "%s: %" PRIu64 " records", argv[0], k.records);
	if (k.records)
		fprintf(stderr, " (sequences %" PRIu64 "..%" PRIu64 ")",
			a.opts.first_sequence + 1, a.opts.first_sequence + k.records);
	if (a.opts.skip_bad)
		fprintf(stderr, ", %" PRIu64 " bad records skipped", k.bad);
	fputc('\n', stderr);
	if (k.backwards)
		fprintf(stderr,
			"%s: note: creationDate went backwards %" PRIu64
			" times (input order kept)\n", argv[0], k.backwards);
	if (after[0])
		fprintf(stderr, "%s: after %s\n", argv[0], after);
	return 0;
}

int ctl_import_csv(int argc, char **argv)
{
	return import_main(argc, argv, false);
}

int ctl_import_json(int argc, char **argv)
{
	return import_main(argc, argv, true);
}

#endif /* IMPORT_PARSERS_ONLY */

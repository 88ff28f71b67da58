/*
 * iys: the İYS importers' parsers (DESIGN §3.5, §3.6), driven by
 * consentctl import-csv / import-json (ctl/import.c), tests/import_test.c
 * and fuzz/csv_fuzz.c, fuzz/json_import_fuzz.c.
 *
 * Records are of one brand (İYS's files and pull pages carry no brandCode:
 * the caller says whose they are) and are numbered first_sequence+1, +2,
 * ... in input order. Input order is kept: İYS orders its daily files and
 * pull pages by creationDate, and reordering would only hide a problem (a
 * creationDate going backwards is counted, not an error).
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
 * fails the import unless skip_bad, which skips and counts it.
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
 * most IYS_LINE_MAX bytes. A bad header fails the import always.
 *
 * JSON: the pull API's page {"after": ..., "list": [ {recipient, type,
 * source, status, consentDate, recipientType, creationDate, transactionId,
 * ...}, ... ]} (other keys ignored; a missing key is an empty value), or a
 * bare list; an input may hold several pages one after another, as a
 * puller appending each response writes. The last page's "after" is
 * returned so the next pull can start there. Input is a buffer of at most
 * IYS_JSON_MAX bytes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/iys.h"
#include "core/recipient.h"
#include "core/stream.h"
#include "core/tztime.h"

#define IYS_READ_CHUNK (64u << 10)

const char *const iys_field_names[IYS_N_FIELDS] = {
	"creationDate", "transactionId", "recipient", "recipientType",
	"type", "status", "consentDate", "source",
};

/* ---- one record ---- */

static int iys_parse_date(const struct iys_text *t, int64_t *out,
			  const char **why)
{
	return tztime_parse(t->p ? t->p : "", t->len, out, why);
}

int iys_record_build(const struct iys_text f[IYS_N_FIELDS],
		     uint32_t brand_code, uint32_t iys_code,
		     struct iys_record *out, const char **field,
		     const char **why)
{
	Consent__V1__Consent *c = &out->c;
	const struct iys_text *t;
	struct recipient r;
	int v;

	consent__v1__consent__init(c);
	c->brand_code = brand_code;
	c->iys_code = iys_code;

	t = &f[IYS_RECIPIENT];
	*field = iys_field_names[IYS_RECIPIENT];
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

	t = &f[IYS_TYPE];
	*field = iys_field_names[IYS_TYPE];
	v = enums_channel_parse(t->p, t->len);
	if (!v) {
		*why = t->len ? "not ARAMA, MESAJ or EPOSTA" : "empty";
		return -EINVAL;
	}
	c->channel = v;

	t = &f[IYS_RECIPIENT_TYPE];
	*field = iys_field_names[IYS_RECIPIENT_TYPE];
	v = enums_rtype_parse(t->p, t->len);
	if (!v) {
		*why = t->len ? "not BIREYSEL or TACIR" : "empty";
		return -EINVAL;
	}
	c->recipient_type = v;

	t = &f[IYS_STATUS];
	*field = iys_field_names[IYS_STATUS];
	v = enums_status_parse(t->p, t->len);
	if (!v && t->len == 3 && strncasecmp(t->p, "RED", 3) == 0)
		v = STATUS_RET;
	if (!v) {
		*why = t->len ? "not ONAY or RET" : "empty";
		return -EINVAL;
	}
	c->status = v;

	/* Open: empty is unspecified, an unknown name SOURCE_OTHER. */
	c->source = enums_source_parse(f[IYS_SOURCE].p, f[IYS_SOURCE].len);

	*field = iys_field_names[IYS_CREATION_DATE];
	if (f[IYS_CREATION_DATE].len == 0) {
		*why = "empty";
		return -EINVAL;
	}
	if (iys_parse_date(&f[IYS_CREATION_DATE], &c->creation_date, why) < 0)
		return -EINVAL;

	*field = iys_field_names[IYS_CONSENT_DATE];
	if (f[IYS_CONSENT_DATE].len == 0) {
		if ((int)c->recipient_type != RTYPE_TACIR) {
			*why = "empty (only a TACIR record may omit it)";
			return -EINVAL;
		}
		c->consent_date = c->creation_date;
	} else if (iys_parse_date(&f[IYS_CONSENT_DATE], &c->consent_date,
				  why) < 0) {
		return -EINVAL;
	}

	t = &f[IYS_TRANSACTION_ID];
	*field = iys_field_names[IYS_TRANSACTION_ID];
	if (t->len > IYS_TX_MAX) {
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
		*field = iys_field_names[IYS_RECIPIENT];
		*why = "does not format";
		return -EINVAL;
	}
	*field = NULL;
	*why = NULL;
	return 0;
}

/* Numbers the record, tracks creationDate order and hands it on. */
static int iys_emit(const struct iys_opts *o, struct iys_counts *k,
		    Consent__V1__Consent *c, iys_emit_fn emit, void *arg,
		    char *err, size_t err_cap)
{
	if (o->first_sequence + k->records + 1 <= o->first_sequence) {
		errmsg_set(err, err_cap, "sequence overflows 64 bits");
		return -EOVERFLOW;
	}
	c->sequence = o->first_sequence + k->records + 1;
	if (k->records && c->creation_date < k->last_creation)
		k->backwards++;
	k->last_creation = c->creation_date;
	k->records++;
	return emit(arg, c);
}

/* A bad record: fatal, or reported and counted with skip_bad. */
static int iys_bad(const struct iys_opts *o, struct iys_counts *k,
		   const char *where, const char *field, const char *why,
		   char *err, size_t err_cap)
{
	if (!o->skip_bad) {
		errmsg_set(err, err_cap, "%s: %s: %s", where, field, why);
		return -EINVAL;
	}
	k->bad++;
	if (o->diag && k->bad <= IYS_BAD_SHOWN)
		fprintf(o->diag, "%s: %s: %s: skipped\n", where, field, why);
	if (o->diag && k->bad == IYS_BAD_SHOWN + 1)
		fprintf(o->diag, "(further bad records are counted, not shown)\n");
	return 0;
}

/* ---- CSV ---- */

struct iys_csv {
	char delim;
	bool have_header;
	int n_columns;              /* in the header */
	int col[IYS_N_FIELDS];      /* header column of each field */
	char scratch[IYS_LINE_MAX]; /* quoted fields, unescaped */
};

static bool iys_csv_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/*
 * Splits line[0..len) (no line end) into at most IYS_COLUMNS_MAX fields.
 * Quoted fields are copied, unescaped, into st->scratch (never longer than
 * the line). Returns the number of fields or -EINVAL with *why.
 */
static int iys_csv_split(struct iys_csv *st, const char *line, size_t len,
			 struct iys_text *cols, const char **why)
{
	size_t i = 0, used = 0;
	int n = 0;

	for (;;) {
		struct iys_text t = { line + i, 0 };

		if (n == IYS_COLUMNS_MAX) {
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
			while (i < len && iys_csv_blank(line[i]))
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
			while (start < end && iys_csv_blank(line[start]))
				start++;
			while (end > start && iys_csv_blank(line[end - 1]))
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

static bool iys_text_is(const struct iys_text *t, const char *name)
{
	return t->len == strlen(name) && strncasecmp(t->p, name, t->len) == 0;
}

static int iys_csv_header(struct iys_csv *st, const char *line, size_t len,
			  uint64_t line_no, char *err, size_t err_cap)
{
	struct iys_text cols[IYS_COLUMNS_MAX];
	size_t commas = 0, semis = 0;
	const char *why;
	int n;

	for (size_t i = 0; i < len; i++) {
		commas += line[i] == ',';
		semis += line[i] == ';';
	}
	st->delim = semis > commas ? ';' : ',';
	n = iys_csv_split(st, line, len, cols, &why);
	if (n < 0) {
		errmsg_set(err, err_cap, "line %" PRIu64 ": header: %s", line_no,
			why);
		return -EPROTO;
	}
	for (int f = 0; f < IYS_N_FIELDS; f++)
		st->col[f] = -1;
	for (int c = 0; c < n; c++) {
		for (int f = 0; f < IYS_N_FIELDS; f++) {
			if (!iys_text_is(&cols[c], iys_field_names[f]))
				continue;
			if (st->col[f] >= 0) {
				errmsg_set(err, err_cap,
					"line %" PRIu64 ": header: column %s twice",
					line_no, iys_field_names[f]);
				return -EPROTO;
			}
			st->col[f] = c;
		}
	}
	for (int f = 0; f < IYS_N_FIELDS; f++) {
		if (st->col[f] < 0) {
			errmsg_set(err, err_cap,
				"line %" PRIu64 ": header lacks column %s (the "
				"first line must name the columns)",
				line_no, iys_field_names[f]);
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
static int iys_csv_line(struct iys_csv *st, const struct iys_opts *o,
			uint64_t line_no, const char *line, size_t len,
			struct iys_record *rec,
			const char **field, const char **why, char *err,
			size_t err_cap)
{
	struct iys_text cols[IYS_COLUMNS_MAX];
	struct iys_text f[IYS_N_FIELDS];
	size_t k = 0;
	int n;

	while (k < len && iys_csv_blank(line[k]))
		k++;
	if (k == len)
		return 0;
	if (!st->have_header)
		return iys_csv_header(st, line, len, line_no, err, err_cap);
	n = iys_csv_split(st, line, len, cols, why);
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
	for (int i = 0; i < IYS_N_FIELDS; i++)
		f[i] = cols[st->col[i]];
	if (iys_record_build(f, o->brand_code, o->iys_code, rec, field,
			     why) < 0)
		return -EINVAL;
	return 1;
}

int iys_csv_import(const struct iys_opts *o, iys_read_fn rd,
		   void *rd_arg, iys_emit_fn emit, void *emit_arg,
		   struct iys_counts *counts, char *err, size_t err_cap)
{
	struct iys_csv *st = calloc(1, sizeof(*st));
	struct iys_record *rec = malloc(sizeof(*rec));
	size_t cap = IYS_LINE_MAX + IYS_READ_CHUNK;
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

		if (!nl && !eof && have - pos < IYS_LINE_MAX + 1) {
			/* Need more: slide the partial line to the front. */
			memmove(buf, buf + pos, have - pos);
			have -= pos;
			pos = 0;
			ssize_t r = rd(rd_arg, buf + have, cap - have);

			if (r < 0) {
				rc = (int)r;
				errmsg_set(err, err_cap, "read: %s", strerror(-rc));
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
		if (len > IYS_LINE_MAX || overlong) {
			/* Report once, then drop bytes up to the line's end. */
			if (!overlong) {
				line_no++;
				char where[48];

				snprintf(where, sizeof(where), "line %" PRIu64, line_no);
				if (!st->have_header) {
					errmsg_set(err, err_cap,
						"%s: header longer than %u bytes",
						where, IYS_LINE_MAX);
					rc = -EPROTO;
					goto out;
				}
				rc = iys_bad(o, counts, where, "row",
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
		int r = iys_csv_line(st, o, line_no, line, len, rec, &field,
				     &why, err, err_cap);

		if (r == -EPROTO) {
			rc = r;
			goto out;
		}
		if (r < 0) {
			snprintf(where, sizeof(where), "line %" PRIu64, line_no);
			rc = iys_bad(o, counts, where, field, why, err, err_cap);
			if (rc < 0)
				goto out;
			continue;
		}
		if (r == 1) {
			rc = iys_emit(o, counts, &rec->c, emit, emit_arg, err,
				      err_cap);
			if (rc < 0)
				goto out;
		}
	}
	if (!st->have_header) {
		errmsg_set(err, err_cap, "no header line (the input is empty)");
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
static int iys_json_text(json_t *obj, const char *key, struct iys_text *t)
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

static int iys_json_page(const struct iys_opts *o, json_t *page, int page_no,
			 iys_emit_fn emit, void *emit_arg,
			 struct iys_counts *counts, struct iys_record *rec,
			 char *after, size_t after_cap, char *err,
			 size_t err_cap)
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
			errmsg_set(err, err_cap, "%s\"list\": %s", prefix,
				list ? "not an array" : "missing");
			return -EPROTO;
		}
		if (a && !json_is_string(a) && !json_is_null(a) &&
		    !json_is_integer(a)) {
			errmsg_set(err, err_cap,
				"%s\"after\": not a string or number", prefix);
			return -EPROTO;
		}
		if (after && after_cap && json_is_string(a))
			snprintf(after, after_cap, "%s", json_string_value(a));
		else if (after && after_cap && json_is_integer(a))
			snprintf(after, after_cap, "%" JSON_INTEGER_FORMAT,
				 json_integer_value(a));
	} else if (!json_is_array(page)) {
		errmsg_set(err, err_cap, "%snot a page object or a list", prefix);
		return -EPROTO;
	}
	json_array_foreach(list, i, item) {
		struct iys_text f[IYS_N_FIELDS];
		const char *field = NULL, *why = NULL;
		char where[64];
		int rc = 0;

		snprintf(where, sizeof(where), "%slist[%zu]", prefix, i);
		if (!json_is_object(item)) {
			field = "record";
			why = "not an object";
			rc = -EINVAL;
		}
		for (int k = 0; rc == 0 && k < IYS_N_FIELDS; k++) {
			if (iys_json_text(item, iys_field_names[k], &f[k]) < 0) {
				field = iys_field_names[k];
				why = "not a string";
				rc = -EINVAL;
			}
		}
		if (rc == 0)
			rc = iys_record_build(f, o->brand_code, o->iys_code,
					      rec, &field, &why);
		if (rc < 0) {
			rc = iys_bad(o, counts, where, field, why, err, err_cap);
			if (rc < 0)
				return rc;
			continue;
		}
		rc = iys_emit(o, counts, &rec->c, emit, emit_arg, err, err_cap);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int iys_json_import(const struct iys_opts *o, const char *buf, size_t len,
		    iys_emit_fn emit, void *emit_arg,
		    struct iys_counts *counts, char *after, size_t after_cap,
		    char *err, size_t err_cap)
{
	struct iys_record *rec = malloc(sizeof(*rec));
	size_t pos = 0;
	int page_no = 0, rc = 0;

	memset(counts, 0, sizeof(*counts));
	if (after && after_cap)
		after[0] = '\0';
	if (!rec)
		return -ENOMEM;
	if (len > IYS_JSON_MAX) {
		errmsg_set(err, err_cap, "input over %u bytes", IYS_JSON_MAX);
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
			errmsg_set(err, err_cap,
				"page %d: byte %zu: %s", page_no,
				pos + (size_t)(je.position > 0 ? je.position : 0),
				je.text);
			rc = -EPROTO;
			goto out;
		}
		/* With JSON_DISABLE_EOF_CHECK, position is the bytes read. */
		if (je.position <= 0 || (size_t)je.position > len - pos) {
			json_decref(page);
			errmsg_set(err, err_cap, "page %d: parser position lost",
				page_no);
			rc = -EPROTO;
			goto out;
		}
		pos += (size_t)je.position;
		rc = iys_json_page(o, page, page_no, emit, emit_arg, counts,
				   rec, after, after_cap, err, err_cap);
		json_decref(page);
		if (rc < 0)
			goto out;
	}
	if (page_no == 0) {
		errmsg_set(err, err_cap, "no JSON page (the input is empty)");
		rc = -EPROTO;
	}
out:
	free(rec);
	return rc;
}

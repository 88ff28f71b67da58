/*
 * json: JSON for the ops port, on jansson (a well-kept parser beats a
 * hand-written one off the hot path). Decoding is strict: a typo in a
 * field name or an enum would otherwise turn silently into a default and
 * a wrong answer, so anything the decoder can tell is wrong is refused
 * with a message naming the field. What only check_batch can judge (does
 * the recipient normalise, does the channel suit it) stays a verdict.
 */
#include "server/json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/hex.h"
#include "index/history.h"
#include "index/outbox.h"

enum json_field {
	FIELD_UNKNOWN,
	FIELD_CHECKS,
	FIELD_RECIPIENT,
	FIELD_BRAND_CODE,
	FIELD_CHANNEL,
	FIELD_RECIPIENT_TYPE,
	FIELD_PURPOSE,
	FIELD_AS_OF_TIME,     /* §10: a Check's only, never a request's */
	FIELD_AS_OF_SEQUENCE,
};

/* Names as the schema spells them and as the proto3 JSON mapping does; in
 * enum json_field order (entry f - 1 is field f). */
static const struct {
	const char *snake;
	const char *camel;
	enum json_field field;
} json_fields[] = {
	{ "checks", "checks", FIELD_CHECKS },
	{ "recipient", "recipient", FIELD_RECIPIENT },
	{ "brand_code", "brandCode", FIELD_BRAND_CODE },
	{ "channel", "channel", FIELD_CHANNEL },
	{ "recipient_type", "recipientType", FIELD_RECIPIENT_TYPE },
	{ "purpose", "purpose", FIELD_PURPOSE },
	{ "as_of_time", "asOfTime", FIELD_AS_OF_TIME },
	{ "as_of_sequence", "asOfSequence", FIELD_AS_OF_SEQUENCE },
};

static enum json_field json_field_lookup(const char *key)
{
	for (size_t i = 0; i < sizeof(json_fields) / sizeof(json_fields[0]); i++)
		if (!strcmp(key, json_fields[i].snake) ||
		    !strcmp(key, json_fields[i].camel))
			return json_fields[i].field;
	return FIELD_UNKNOWN;
}

/* A client's text for an error message: printable ASCII only (the message
 * goes back out as JSON, which must stay valid UTF-8), at most 40 bytes. */
static const char *json_quote(char buf[48], const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len && n < 40; i++)
		buf[n++] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
	if (len > 40) {
		buf[n - 1] = '.';
		buf[n - 2] = '.';
		buf[n - 3] = '.';
	}
	buf[n] = '\0';
	return buf;
}

static int json_enum_max(enum json_enum kind)
{
	switch (kind) {
	case JSON_ENUM_CHANNEL:
		return CHANNEL_EPOSTA;
	case JSON_ENUM_RTYPE:
		return RTYPE_TACIR;
	case JSON_ENUM_PURPOSE:
		return PURPOSE_BILGILENDIRME;
	}
	return 0;
}

static const char *json_enum_expected(enum json_enum kind)
{
	switch (kind) {
	case JSON_ENUM_CHANNEL:
		return "ARAMA, MESAJ or EPOSTA";
	case JSON_ENUM_RTYPE:
		return "BIREYSEL or TACIR";
	case JSON_ENUM_PURPOSE:
		return "TICARI or BILGILENDIRME";
	}
	return "";
}

int json_enum_text(enum json_enum kind, const char *s, size_t len)
{
	int v = 0;
	bool digits = len > 0 && len <= 9;

	if (len == 0)
		return 0;
	for (size_t i = 0; digits && i < len; i++)
		digits = s[i] >= '0' && s[i] <= '9';
	if (digits) {
		for (size_t i = 0; i < len; i++)
			v = v * 10 + (s[i] - '0');
		return v <= json_enum_max(kind) ? v : -EINVAL;
	}
	switch (kind) {
	case JSON_ENUM_CHANNEL:
		v = enums_channel_parse(s, len);
		break;
	case JSON_ENUM_RTYPE:
		v = enums_rtype_parse(s, len);
		break;
	case JSON_ENUM_PURPOSE:
		v = enums_purpose_parse(s, len);
		break;
	}
	return v > 0 ? v : -EINVAL;
}

int json_brand_text(const char *s, size_t len, uint32_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 10)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* A decimal integer as text: digits, a '-' first when is_signed; into
 * *out (int64 range when is_signed, else uint64). 0, or -EINVAL. */
static int json_int_text(const char *s, size_t len, bool is_signed,
			 uint64_t *out)
{
	bool neg = is_signed && len > 0 && s[0] == '-';
	uint64_t v = 0, lim = is_signed ? (neg ? (uint64_t)INT64_MAX + 1
					       : (uint64_t)INT64_MAX)
					: UINT64_MAX;
	size_t i = neg ? 1 : 0;

	if (len == i || len - i > 20)
		return -EINVAL;
	for (; i < len; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (d > 9 || v > (lim - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	*out = neg ? (uint64_t)0 - v : v;
	return 0;
}

/* An as-of field's text into c (§10): as_of_time Unix seconds (int64),
 * as_of_sequence a log position (uint64). */
static int json_as_of_text(enum json_field f, struct check_input *c,
			   const char *where, const char *s, size_t len,
			   char *err, size_t err_cap)
{
	char q[48];
	uint64_t v;

	if (json_int_text(s, len, f == FIELD_AS_OF_TIME, &v) < 0) {
		errmsg_set(err, err_cap, "%s%s: \"%s\" is not %s", where,
			   f == FIELD_AS_OF_TIME ? "as_of_time"
						 : "as_of_sequence",
			   json_quote(q, s, len),
			   f == FIELD_AS_OF_TIME ? "Unix seconds (an int64)"
						 : "a sequence (a uint64)");
		return -EINVAL;
	}
	if (f == FIELD_AS_OF_TIME)
		c->as_of_time = (int64_t)v;
	else
		c->as_of_sequence = v;
	return 0;
}

int json_check_param(struct check_input *c, const char *key, size_t key_len,
		     const char *val, size_t val_len, char *err, size_t err_cap)
{
	char name[32], q[48];
	enum json_field f = FIELD_UNKNOWN;
	enum json_enum kind;
	int e;

	if (key_len < sizeof(name)) {
		memcpy(name, key, key_len);
		name[key_len] = '\0';
		if (strlen(name) == key_len)
			f = json_field_lookup(name);
	}
	switch (f) {
	case FIELD_RECIPIENT:
		c->recipient = val;
		c->recipient_len = val_len;
		return 1 << f;
	case FIELD_BRAND_CODE:
		if (json_brand_text(val, val_len, &c->brand_code) < 0) {
			errmsg_set(err, err_cap,
				  "brand_code: \"%s\" is not a number in 0..4294967295",
				  json_quote(q, val, val_len));
			return -EINVAL;
		}
		return 1 << f;
	case FIELD_CHANNEL:
		kind = JSON_ENUM_CHANNEL;
		break;
	case FIELD_RECIPIENT_TYPE:
		kind = JSON_ENUM_RTYPE;
		break;
	case FIELD_PURPOSE:
		kind = JSON_ENUM_PURPOSE;
		break;
	case FIELD_AS_OF_TIME:
	case FIELD_AS_OF_SEQUENCE:
		if (json_as_of_text(f, c, "", val, val_len, err, err_cap) < 0)
			return -EINVAL;
		return 1 << f;
	default:
		errmsg_set(err, err_cap, "unknown parameter \"%s\"",
			  json_quote(q, key, key_len));
		return -EINVAL;
	}
	e = json_enum_text(kind, val, val_len);
	if (e < 0) {
		errmsg_set(err, err_cap, "%s: unknown value \"%s\" (expected %s)",
			  json_fields[f - 1].snake, json_quote(q, val, val_len),
			  json_enum_expected(kind));
		return -EINVAL;
	}
	if (f == FIELD_CHANNEL)
		c->channel = e;
	else if (f == FIELD_RECIPIENT_TYPE)
		c->rtype = e;
	else
		c->purpose = e;
	return 1 << f;
}

int json_history_param(struct check_input *c, const char *key,
		       size_t key_len, const char *val, size_t val_len,
		       char *err, size_t err_cap)
{
	char name[32], q[48];
	enum json_field f = FIELD_UNKNOWN;

	if (key_len < sizeof(name)) {
		memcpy(name, key, key_len);
		name[key_len] = '\0';
		if (strlen(name) == key_len)
			f = json_field_lookup(name);
	}
	if (f == FIELD_PURPOSE || f == FIELD_AS_OF_TIME ||
	    f == FIELD_AS_OF_SEQUENCE) {
		errmsg_set(err, err_cap, "unknown parameter \"%s\" (a history "
			   "names a key: recipient, brand_code, channel, "
			   "recipient_type)", json_quote(q, key, key_len));
		return -EINVAL;
	}
	return json_check_param(c, key, key_len, val, val_len, err, err_cap);
}

/*
 * Objects and arrays in the body, counted before parsing: a body of a
 * megabyte of "{}," would make jansson build hundreds of thousands of
 * objects before the check count could be refused. Quotes and escapes are
 * followed so that brackets inside strings do not count.
 */
static size_t json_count_containers(const char *s, size_t len)
{
	size_t n = 0;
	bool in_string = false;

	for (size_t i = 0; i < len; i++) {
		char c = s[i];

		if (in_string) {
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		} else if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			n++;
		}
	}
	return n;
}

/* Decodes one field's value into *c; where names the field in errors. */
static int json_decode_field(enum json_field f, const json_t *v,
			     struct check_input *c, const char *where,
			     char *err, size_t err_cap)
{
	char q[48];
	enum json_enum kind;
	int *slot;
	int e;

	if (json_is_null(v))
		return 0; /* unset: the default applies */
	switch (f) {
	case FIELD_RECIPIENT:
		if (!json_is_string(v)) {
			errmsg_set(err, err_cap, "%srecipient: expected a string",
				  where);
			return -EINVAL;
		}
		c->recipient = json_string_value(v);
		c->recipient_len = json_string_length(v);
		return 0;
	case FIELD_BRAND_CODE:
		if (json_is_integer(v)) {
			json_int_t b = json_integer_value(v);

			if (b < 0 || b > (json_int_t)UINT32_MAX) {
				errmsg_set(err, err_cap,
					  "%sbrand_code: %lld is outside 0..4294967295",
					  where, (long long)b);
				return -EINVAL;
			}
			c->brand_code = (uint32_t)b;
			return 0;
		}
		if (json_is_string(v)) {
			if (json_brand_text(json_string_value(v),
					    json_string_length(v),
					    &c->brand_code) < 0) {
				errmsg_set(err, err_cap,
					  "%sbrand_code: \"%s\" is not a number in 0..4294967295",
					  where,
					  json_quote(q, json_string_value(v),
						     json_string_length(v)));
				return -EINVAL;
			}
			return 0;
		}
		errmsg_set(err, err_cap, "%sbrand_code: expected an integer",
			  where);
		return -EINVAL;
	case FIELD_CHANNEL:
		kind = JSON_ENUM_CHANNEL;
		slot = &c->channel;
		break;
	case FIELD_RECIPIENT_TYPE:
		kind = JSON_ENUM_RTYPE;
		slot = &c->rtype;
		break;
	case FIELD_PURPOSE:
		kind = JSON_ENUM_PURPOSE;
		slot = &c->purpose;
		break;
	case FIELD_AS_OF_TIME:
	case FIELD_AS_OF_SEQUENCE: {
		/* An integer, or its decimal text (proto3 JSON writes 64-bit
		 * integers as strings). */
		const char *name = f == FIELD_AS_OF_TIME ? "as_of_time"
							 : "as_of_sequence";
		if (json_is_string(v))
			return json_as_of_text(f, c, where, json_string_value(v),
					       json_string_length(v), err,
					       err_cap);
		if (!json_is_integer(v) ||
		    (f == FIELD_AS_OF_SEQUENCE && json_integer_value(v) < 0)) {
			errmsg_set(err, err_cap, "%s%s: expected %s", where,
				   name, f == FIELD_AS_OF_TIME ?
				   "an integer (Unix seconds)" :
				   "a non-negative integer");
			return -EINVAL;
		}
		if (f == FIELD_AS_OF_TIME)
			c->as_of_time = (int64_t)json_integer_value(v);
		else
			c->as_of_sequence = (uint64_t)json_integer_value(v);
		return 0;
	}
	default:
		return -EINVAL; /* callers route the others elsewhere */
	}

	/* The three enums. */
	{
		const char *name = f == FIELD_CHANNEL ? "channel" :
				   f == FIELD_RECIPIENT_TYPE ? "recipient_type" :
							       "purpose";

		if (json_is_string(v)) {
			e = json_enum_text(kind, json_string_value(v),
					   json_string_length(v));
			if (e < 0) {
				errmsg_set(err, err_cap,
					  "%s%s: unknown value \"%s\" (expected %s)",
					  where, name,
					  json_quote(q, json_string_value(v),
						     json_string_length(v)),
					  json_enum_expected(kind));
				return -EINVAL;
			}
			*slot = e;
			return 0;
		}
		if (json_is_integer(v)) {
			json_int_t n = json_integer_value(v);

			if (n < 0 || n > json_enum_max(kind)) {
				errmsg_set(err, err_cap,
					  "%s%s: %lld is not a defined value (expected %s)",
					  where, name, (long long)n,
					  json_enum_expected(kind));
				return -EINVAL;
			}
			*slot = (int)n;
			return 0;
		}
		errmsg_set(err, err_cap, "%s%s: expected a name or a number",
			  where, name);
		return -EINVAL;
	}
}

/* The body's bytes to a jansson document, refusing what is too big to
 * parse at all (bytes, or more containers than checks allowed). */
static int json_parse_body(const char *body, size_t len, size_t max_checks,
			   json_t **doc, char *err, size_t err_cap)
{
	json_error_t je;

	if (len > JSON_MAX_BODY_BYTES) {
		errmsg_set(err, err_cap, "body: %zu bytes, over the limit of %u",
			  len, JSON_MAX_BODY_BYTES);
		return -EMSGSIZE;
	}
	/* The top object, the checks array, then one object per check. */
	if (json_count_containers(body, len) > max_checks + 2) {
		errmsg_set(err, err_cap,
			  "checks: over the limit of %zu (the body holds more "
			  "objects and arrays than that)", max_checks);
		return -EMSGSIZE;
	}
	/* No JSON_DECODE_ANY: the top level must be an object or array; no
	 * JSON_ALLOW_NUL: a "\u0000" in a string is refused. */
	*doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!*doc) {
		/* jansson quotes the offending bytes ("near '...'"): keep
		 * the message printable ASCII, like every other. */
		for (char *p = je.text; *p; p++)
			if (*p < 0x20 || *p >= 0x7f)
				*p = '?';
		errmsg_set(err, err_cap,
			  "body is not valid JSON: %s (line %d, column %d)",
			  je.text, je.line, je.column);
		return -EINVAL;
	}
	if (!json_is_object(*doc)) {
		errmsg_set(err, err_cap, "body: expected a JSON object");
		json_decref(*doc);
		*doc = NULL;
		return -EINVAL;
	}
	return 0;
}

/* The top object's fields: the defaults into *def, the array into
 * *checks (never NULL on success). */
static int json_decode_top(json_t *doc, struct check_input *def,
			   json_t **checks, char *err, size_t err_cap)
{
	const char *key;
	char q[48];
	json_t *v;
	int e;

	*checks = NULL;
	json_object_foreach(doc, key, v) {
		enum json_field f = json_field_lookup(key);

		if (f == FIELD_CHECKS) {
			if (json_is_null(v))
				continue;
			if (!json_is_array(v)) {
				errmsg_set(err, err_cap,
					  "checks: expected an array");
				return -EINVAL;
			}
			*checks = v;
		} else if (f == FIELD_UNKNOWN || f == FIELD_RECIPIENT ||
			   f == FIELD_AS_OF_TIME || f == FIELD_AS_OF_SEQUENCE) {
			/* A request-level recipient is not a CheckRequest
			 * field: probably a single check sent bare. */
			errmsg_set(err, err_cap,
				  "unknown field \"%s\"%s", json_quote(q, key, strlen(key)),
				  f == FIELD_RECIPIENT ?
				  " (put checks in \"checks\":[...])" : "");
			return -EINVAL;
		} else {
			e = json_decode_field(f, v, def, "", err, err_cap);
			if (e < 0)
				return e;
		}
	}
	if (!*checks) {
		errmsg_set(err, err_cap, "checks: missing (an array of checks)");
		return -EINVAL;
	}
	return 0;
}

/* checks[i] into *c, the request's defaults filling its unset fields. */
static int json_decode_one(json_t *chk, size_t i,
			   const struct check_input *def, struct check_input *c,
			   char *err, size_t err_cap)
{
	char where[48], q[48];
	const char *key;
	json_t *v;
	int e;

	snprintf(where, sizeof(where), "checks[%zu].", i);
	if (!json_is_object(chk)) {
		errmsg_set(err, err_cap, "checks[%zu]: expected an object", i);
		return -EINVAL;
	}
	json_object_foreach(chk, key, v) {
		enum json_field f = json_field_lookup(key);

		if (f == FIELD_UNKNOWN || f == FIELD_CHECKS) {
			errmsg_set(err, err_cap, "%sunknown field \"%s\"", where,
				  json_quote(q, key, strlen(key)));
			return -EINVAL;
		}
		e = json_decode_field(f, v, c, where, err, err_cap);
		if (e < 0)
			return e;
	}
	if (!c->recipient)
		c->recipient = "";
	/* Request-level fields are the defaults for a check's unset (zero)
	 * ones, as in CheckRequest. */
	if (!c->brand_code)
		c->brand_code = def->brand_code;
	if (!c->channel)
		c->channel = def->channel;
	if (!c->rtype)
		c->rtype = def->rtype;
	if (!c->purpose)
		c->purpose = def->purpose;
	return 0;
}

int json_decode_check_request(const char *body, size_t len, size_t max_checks,
			      struct json_check_request *out,
			      char *err, size_t err_cap)
{
	struct check_input def = { 0 };
	json_t *doc, *checks;
	size_t n;
	int e;

	memset(out, 0, sizeof(*out));
	e = json_parse_body(body, len, max_checks, &doc, err, err_cap);
	if (e < 0)
		return e;
	e = json_decode_top(doc, &def, &checks, err, err_cap);
	if (e < 0)
		goto fail;
	n = json_array_size(checks);
	if (n > max_checks) {
		errmsg_set(err, err_cap, "checks: %zu of them, over the limit of %zu",
			  n, max_checks);
		e = -EMSGSIZE;
		goto fail;
	}
	out->checks = calloc(n ? n : 1, sizeof(*out->checks));
	if (!out->checks) {
		errmsg_set(err, err_cap, "out of memory");
		e = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		e = json_decode_one(json_array_get(checks, i), i, &def,
				    &out->checks[i], err, err_cap);
		if (e < 0)
			goto fail;
	}
	out->n_checks = n;
	out->doc = doc;
	return 0;

fail:
	free(out->checks);
	out->checks = NULL;
	json_decref(doc);
	return e;
}

void json_check_request_fini(struct json_check_request *req)
{
	free(req->checks);
	json_decref(req->doc);
	memset(req, 0, sizeof(*req));
}

/* Building objects: the first failed allocation sticks in *ok, so one test
 * at the end covers them all (json_object_set_new drops a NULL value). */
static void json_put(json_t *o, const char *key, json_t *v, bool *ok)
{
	if (json_object_set_new(o, key, v) != 0)
		*ok = false;
}

static json_t *json_u64(uint64_t v)
{
	return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* A client's or İYS's text: as it is when it is UTF-8, else printable
 * ASCII with '?' for the rest (JSON must stay valid). */
static json_t *json_text_value(const char *t)
{
	json_t *v = json_string(t);
	if (v != NULL)
		return v;
	size_t n = strlen(t);
	char *b = malloc(n + 1);
	if (b == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		b[i] = (t[i] >= 0x20 && t[i] < 0x7f) ? t[i] : '?';
	b[n] = '\0';
	v = json_string(b);
	free(b);
	return v;
}

/* 32 bytes as 64 lower-case hex digits. */
static json_t *json_hex32(const uint8_t *h)
{
	char t[65];
	return json_string(hex_put(t, h, 32));
}

/* An enum by name; by number should a value have none (not expected). */
static json_t *json_enum_value(const char *name, int v)
{
	return name ? json_string(name) : json_integer(v);
}

static json_t *json_verdict_object(const struct verdict *v)
{
	json_t *o = json_object();
	bool ok = o != NULL;

	if (!o)
		return NULL;
	json_put(o, "allow", json_boolean(v->allow), &ok);
	json_put(o, "reason",
		 json_enum_value(enums_reason_name(v->reason), v->reason), &ok);
	if (v->status) {
		json_put(o, "status",
			 json_enum_value(enums_status_name(v->status), v->status),
			 &ok);
		if (v->source)
			json_put(o, "source",
				 json_enum_value(enums_source_name(v->source),
						 v->source),
				 &ok);
		json_put(o, "consent_date", json_integer(v->consent_date), &ok);
	}
	if (v->error)
		json_put(o, "error", json_string(v->error), &ok);
	/* §10: an as-of verdict's deciding record (none: left out; a
	 * snapshot's record may have sequence 0). */
	if (v->transaction_id != NULL && v->status != 0) {
		json_put(o, "sequence", json_u64(v->sequence), &ok);
		json_put(o, "transaction_id",
			 json_text_value(v->transaction_id), &ok);
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* Compact, in insertion order (jansson keeps it since 2.8). */
static char *json_dump_free(json_t *o)
{
	char *s;

	if (!o)
		return NULL;
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

char *json_encode_verdict(const struct verdict *v)
{
	return json_dump_free(json_verdict_object(v));
}

char *json_encode_check_response(const struct verdict *v, size_t n,
				 uint64_t applied_sequence, int64_t data_as_of)
{
	json_t *o = json_object(), *arr = json_array();
	bool ok = o && arr;

	if (!ok) {
		json_decref(o);
		json_decref(arr);
		return NULL;
	}
	for (size_t i = 0; i < n && ok; i++)
		if (json_array_append_new(arr, json_verdict_object(&v[i])) != 0)
			ok = false;
	json_put(o, "verdicts", arr, &ok);
	json_put(o, "applied_sequence", json_u64(applied_sequence), &ok);
	json_put(o, "data_as_of", json_integer(data_as_of), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

char *json_encode_stats(const struct json_stats *s)
{
	json_t *o = json_object();
	bool ok = o != NULL;

	if (!o)
		return NULL;
	if (!s->own_only)
		json_put(o, "records", json_u64(s->records), &ok);
	json_put(o, "applied_sequence", json_u64(s->applied_sequence), &ok);
	json_put(o, "data_as_of", json_integer(s->data_as_of), &ok);
	if (!s->own_only)
		json_put(o, "generation", json_u64(s->generation), &ok);
	json_put(o, "checks_total", json_u64(s->checks_total), &ok);
	if (!s->own_only && s->outbox) {
		json_put(o, "outbox_depth", json_u64(s->outbox_depth), &ok);
		json_put(o, "outbox_oldest_age_seconds",
			 json_integer(s->outbox_oldest_age_s), &ok);
	}
	if (s->origin_cursor != NULL)
		json_put(o, "origin_cursor", json_string(s->origin_cursor), &ok);
	if (s->chain) {
		json_put(o, "chain_sequence", json_u64(s->chain_sequence), &ok);
		json_put(o, "chain_hash", json_hex32(s->chain_hash), &ok);
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

char *json_encode_error(const char *msg)
{
	json_t *o = json_object();
	json_t *m = json_string(msg);
	bool ok = o != NULL;

	if (!m) {
		/* Not valid UTF-8 (or ENOMEM): send it as printable ASCII. */
		char buf[256];
		size_t i;

		for (i = 0; msg[i] && i < sizeof(buf) - 1; i++)
			buf[i] = (msg[i] >= 0x20 && msg[i] < 0x7f) ? msg[i] : '?';
		buf[i] = '\0';
		m = json_string(buf);
	}
	if (!o) {
		json_decref(m);
		return NULL;
	}
	json_put(o, "error", m, &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

/* ---- local rejections and the outbox (§11, §12) ---- */

int json_decode_reject(const char *body, size_t len, struct json_reject *out,
		       char *err, size_t err_cap)
{
	struct check_input c = { 0 };
	const char *key;
	char q[48];
	json_t *doc, *v;
	int e;

	memset(out, 0, sizeof(*out));
	e = json_parse_body(body, len, 0, &doc, err, err_cap);
	if (e < 0)
		return e;
	json_object_foreach(doc, key, v) {
		enum json_field f = json_field_lookup(key);

		if (!strcmp(key, "source")) {
			int src = 0;

			if (json_is_null(v))
				continue;
			if (json_is_string(v)) {
				src = enums_source_parse(json_string_value(v),
							 json_string_length(v));
				if (src == SOURCE_OTHER &&
				    strcasecmp(json_string_value(v),
					       "SOURCE_OTHER") != 0)
					src = -1;
			} else if (json_is_integer(v)) {
				json_int_t n = json_integer_value(v);

				src = n >= 0 && n <= SOURCE_OTHER &&
				      enums_source_valid((int)n) ? (int)n : -1;
			} else {
				errmsg_set(err, err_cap, "source: expected a "
					   "name or a number");
				e = -EINVAL;
				goto fail;
			}
			if (src < 0) {
				errmsg_set(err, err_cap, "source: unknown value "
					   "(expected a source name such as "
					   "HS_MESAJ)");
				e = -EINVAL;
				goto fail;
			}
			out->source = src;
			continue;
		}
		if (f == FIELD_UNKNOWN || f == FIELD_CHECKS ||
		    f == FIELD_PURPOSE || f == FIELD_AS_OF_TIME ||
		    f == FIELD_AS_OF_SEQUENCE) {
			errmsg_set(err, err_cap, "unknown field \"%s\"",
				   json_quote(q, key, strlen(key)));
			e = -EINVAL;
			goto fail;
		}
		e = json_decode_field(f, v, &c, "", err, err_cap);
		if (e < 0)
			goto fail;
	}
	out->recipient = c.recipient ? c.recipient : "";
	out->recipient_len = c.recipient ? c.recipient_len : 0;
	out->brand_code = c.brand_code;
	out->channel = c.channel;
	out->recipient_type = c.rtype;
	out->doc = doc;
	return 0;
fail:
	json_decref(doc);
	return e;
}

void json_reject_fini(struct json_reject *r)
{
	json_decref(r->doc);
	memset(r, 0, sizeof(*r));
}

int json_decode_pushed(const char *body, size_t len, uint64_t *sequence,
		       char *id, size_t id_cap, char *err, size_t err_cap)
{
	const char *key;
	char q[48];
	json_t *doc, *v;
	bool have_seq = false, have_id = false;
	int e;

	*sequence = 0;
	if (id_cap > 0)
		id[0] = '\0';
	e = json_parse_body(body, len, 0, &doc, err, err_cap);
	if (e < 0)
		return e;
	json_object_foreach(doc, key, v) {
		if (!strcmp(key, "sequence")) {
			if (!json_is_integer(v) || json_integer_value(v) <= 0) {
				errmsg_set(err, err_cap, "sequence: expected a "
					   "positive integer");
				e = -EINVAL;
				goto out;
			}
			*sequence = (uint64_t)json_integer_value(v);
			have_seq = true;
		} else if (!strcmp(key, "transaction_id") ||
			   !strcmp(key, "transactionId")) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) >= id_cap) {
				errmsg_set(err, err_cap, "transaction_id: expected "
					   "a string of 1 to %zu bytes",
					   id_cap - 1);
				e = -EINVAL;
				goto out;
			}
			memcpy(id, json_string_value(v), json_string_length(v) + 1);
			have_id = true;
		} else {
			errmsg_set(err, err_cap, "unknown field \"%s\"",
				   json_quote(q, key, strlen(key)));
			e = -EINVAL;
			goto out;
		}
	}
	if (!have_seq || !have_id) {
		errmsg_set(err, err_cap, "%s: missing",
			   have_seq ? "transaction_id" : "sequence");
		e = -EINVAL;
	}
out:
	json_decref(doc);
	return e;
}

char *json_encode_apply(uint64_t applied_sequence, uint32_t applied,
			uint32_t skipped)
{
	json_t *o = json_object();
	bool ok = o != NULL;

	if (!o)
		return NULL;
	json_put(o, "applied_sequence", json_u64(applied_sequence), &ok);
	json_put(o, "applied", json_integer(applied), &ok);
	json_put(o, "skipped", json_integer(skipped), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

char *json_encode_outbox(const struct outbox_entry *e, size_t n, uint64_t depth)
{
	json_t *o = json_object(), *arr = json_array();
	bool ok = o && arr;

	if (!ok) {
		json_decref(o);
		json_decref(arr);
		return NULL;
	}
	for (size_t i = 0; i < n && ok; i++) {
		json_t *x = json_object();

		ok = x != NULL;
		if (!ok)
			break;
		json_put(x, "sequence", json_u64(e[i].sequence), &ok);
		json_put(x, "recipient", json_string(e[i].recipient), &ok);
		json_put(x, "brand_code", json_integer(e[i].brand_code), &ok);
		json_put(x, "iys_code", json_integer(e[i].iys_code), &ok);
		json_put(x, "channel",
			 json_enum_value(enums_channel_name(e[i].channel),
					 e[i].channel), &ok);
		json_put(x, "recipient_type",
			 json_enum_value(enums_rtype_name(e[i].recipient_type),
					 e[i].recipient_type), &ok);
		json_put(x, "source",
			 json_enum_value(enums_source_name(e[i].source),
					 e[i].source), &ok);
		json_put(x, "consent_date", json_integer(e[i].consent_date), &ok);
		json_put(x, "state", json_string(outbox_state_name(e[i].state)),
			 &ok);
		json_put(x, "transaction_id", json_string(e[i].pushed_id), &ok);
		if (json_array_append_new(arr, x) != 0)
			ok = false;
	}
	json_put(o, "entries", arr, &ok);
	json_put(o, "depth", json_u64(depth), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

char *json_encode_pushed(uint64_t sequence)
{
	json_t *o = json_object();
	bool ok = o != NULL;

	if (!o)
		return NULL;
	json_put(o, "sequence", json_u64(sequence), &ok);
	json_put(o, "state", json_string(outbox_state_name(OUTBOX_PUSHED)), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

char *json_encode_history(const struct history_entry *e, size_t n,
			  size_t total, uint64_t applied_sequence)
{
	json_t *o = json_object(), *arr = json_array();
	bool ok = o && arr;

	if (!ok) {
		json_decref(o);
		json_decref(arr);
		return NULL;
	}
	for (size_t i = 0; i < n && ok; i++) {
		const Consent__V1__Consent *c = &e[i].consent;
		json_t *h = json_object(), *m = json_object();
		if (h == NULL || m == NULL) {
			json_decref(h);
			json_decref(m);
			ok = false;
			break;
		}
		json_put(m, "recipient", json_text_value(c->recipient), &ok);
		json_put(m, "channel", json_enum_value(enums_channel_name(
			 (int)c->channel), (int)c->channel), &ok);
		json_put(m, "recipient_type", json_enum_value(enums_rtype_name(
			 (int)c->recipient_type), (int)c->recipient_type), &ok);
		json_put(m, "brand_code", json_integer(c->brand_code), &ok);
		json_put(m, "iys_code", json_integer(c->iys_code), &ok);
		json_put(m, "status", json_enum_value(enums_status_name(
			 (int)c->status), (int)c->status), &ok);
		json_put(m, "source", json_enum_value(enums_source_name(
			 (int)c->source), (int)c->source), &ok);
		json_put(m, "consent_date", json_integer(c->consent_date), &ok);
		json_put(m, "creation_date", json_integer(c->creation_date),
			 &ok);
		json_put(m, "transaction_id", json_text_value(
			 c->transaction_id != NULL ? c->transaction_id : ""),
			 &ok);
		json_put(m, "sequence", json_u64(c->sequence), &ok);
		json_put(h, "consent", m, &ok);
		json_put(h, "applied_at", json_integer(e[i].applied_at), &ok);
		json_put(h, "chain_hash", json_hex32(e[i].chain), &ok);
		if (json_array_append_new(arr, h) != 0)
			ok = false;
	}
	json_put(o, "entries", arr, &ok);
	json_put(o, "applied_sequence", json_u64(applied_sequence), &ok);
	json_put(o, "total", json_u64(total), &ok);
	json_put(o, "truncated", json_boolean(total > n), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return json_dump_free(o);
}

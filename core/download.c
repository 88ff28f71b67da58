/*
 * download: libcurl's easy interface on a thread (core/download.h).
 *
 * The body goes to the descriptor from curl's write callback, whole
 * (write_all: a pipe takes it in pieces); a failed write stops the
 * transfer (the callback returns 0, CURLE_WRITE_ERROR) and is what
 * download_finish reports. Until the status is known to be 200, nothing
 * is written: a refusal's body is kept (a few hundred bytes) to be quoted
 * in the message instead, never handed to a stream reader.
 */
#include "core/download.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "core/errmsg.h"
#include "core/fsutil.h"

#define DOWNLOAD_CONNECT_S 10L
#define DOWNLOAD_STALL_S 60L
#define DOWNLOAD_QUOTE 300 /* bytes of a refusal's body kept */

struct download {
	CURL *curl;
	struct curl_slist *headers;
	pthread_t thread;
	int fd;
	long status;          /* 0 until the first body byte */
	uint64_t bytes;
	int write_rc;         /* a failed write's -errno */
	char quote[DOWNLOAD_QUOTE + 1];
	size_t quote_len;
	CURLcode res;
	char curl_err[CURL_ERROR_SIZE];
};

static pthread_once_t download_once = PTHREAD_ONCE_INIT;
static CURLcode download_init_rc;

static void download_init(void)
{
	/* Once, before any transfer thread: curl_global_init is not
	 * thread-safe in every build. */
	download_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int download_snapshot_url(const char *base, char *url, size_t url_cap,
			  char *err, size_t err_cap)
{
	const char *host;
	if (strncmp(base, "http://", 7) == 0)
		host = base + 7;
	else if (strncmp(base, "https://", 8) == 0)
		host = base + 8;
	else
		return errmsg_fail(err, err_cap, -EINVAL, "%s: not an http:// "
				   "or https:// URL", base);
	if (*host == '\0' || *host == '/' || *host == ':')
		return errmsg_fail(err, err_cap, -EINVAL, "%s: no host", base);
	size_t n = strlen(base);
	while (n > 0 && base[n - 1] == '/')
		n--;
	int w = snprintf(url, url_cap, "%.*s/v1/snapshot", (int)n, base);
	if (w < 0 || (size_t)w >= url_cap)
		return errmsg_fail(err, err_cap, -EINVAL, "%s: too long", base);
	return 0;
}

static size_t download_body(char *p, size_t size, size_t n, void *arg)
{
	struct download *d = arg;
	size_t len = size * n;

	if (d->status == 0)
		curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &d->status);
	if (d->status != 200) {
		size_t room = DOWNLOAD_QUOTE - d->quote_len;
		size_t k = len < room ? len : room;
		memcpy(d->quote + d->quote_len, p, k);
		d->quote_len += k;
		return len;
	}
	int rc = fsutil_write_all(d->fd, p, len);
	if (rc < 0) {
		d->write_rc = rc;
		return 0; /* CURLE_WRITE_ERROR: the transfer stops */
	}
	d->bytes += len;
	return len;
}

static void *download_main(void *arg)
{
	struct download *d = arg;

	d->res = curl_easy_perform(d->curl);
	if (d->status == 0)
		curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &d->status);
	close(d->fd); /* the reader's end of the stream */
	d->fd = -1;
	return NULL;
}

static void download_free(struct download *d)
{
	if (d->fd >= 0)
		close(d->fd);
	curl_slist_free_all(d->headers);
	if (d->curl != NULL)
		curl_easy_cleanup(d->curl);
	free(d);
}

int download_start(const char *url, const char *token, int fd,
		   struct download **out, char *err, size_t err_cap)
{
	struct download *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		close(fd);
		return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
	}
	d->fd = fd;
	pthread_once(&download_once, download_init);
	if (download_init_rc != CURLE_OK || (d->curl = curl_easy_init()) == NULL) {
		download_free(d);
		return errmsg_fail(err, err_cap, -ENOMEM, "libcurl cannot start");
	}
	if (token != NULL) {
		char h[1100];
		snprintf(h, sizeof(h), "Authorization: Bearer %.1024s", token);
		d->headers = curl_slist_append(NULL, h);
		if (d->headers == NULL) {
			download_free(d);
			return errmsg_fail(err, err_cap, -ENOMEM, "out of memory");
		}
	}
	CURL *c = d->curl;
	CURLcode e = CURLE_OK;
#define SET(opt, val) \
	do { \
		if (e == CURLE_OK) \
			e = curl_easy_setopt(c, opt, val); \
	} while (0)
	SET(CURLOPT_URL, url);
	SET(CURLOPT_PROTOCOLS_STR, "http,https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_CONNECTTIMEOUT, DOWNLOAD_CONNECT_S);
	SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
	SET(CURLOPT_LOW_SPEED_TIME, DOWNLOAD_STALL_S);
	SET(CURLOPT_WRITEFUNCTION, download_body);
	SET(CURLOPT_WRITEDATA, d);
	SET(CURLOPT_ERRORBUFFER, d->curl_err);
	SET(CURLOPT_BUFFERSIZE, 256L << 10);
	if (d->headers != NULL)
		SET(CURLOPT_HTTPHEADER, d->headers);
#undef SET
	if (e != CURLE_OK) {
		download_free(d);
		return errmsg_fail(err, err_cap, -EINVAL, "libcurl: %s",
				   curl_easy_strerror(e));
	}
	int rc = pthread_create(&d->thread, NULL, download_main, d);
	if (rc != 0) {
		download_free(d);
		return errmsg_fail(err, err_cap, -rc, "download thread: %s",
				   strerror(rc));
	}
	*out = d;
	return 0;
}

int download_finish(struct download *d, uint64_t *bytes, char *err,
		    size_t err_cap)
{
	int rc = 0;

	pthread_join(d->thread, NULL);
	if (bytes != NULL)
		*bytes = d->bytes;
	if (d->status != 0 && d->status != 200) {
		/* The quote on one line, control bytes shown as '?'. */
		for (size_t i = 0; i < d->quote_len; i++)
			if ((unsigned char)d->quote[i] < 0x20)
				d->quote[i] = ' ';
		d->quote[d->quote_len] = '\0';
		rc = errmsg_fail(err, err_cap, -EPROTO, "the peer answered "
				 "HTTP %ld: %s", d->status,
				 d->quote_len ? d->quote : "(no body)");
	} else if (d->write_rc < 0) {
		rc = errmsg_fail(err, err_cap, d->write_rc, "after %" PRIu64
				 " bytes the snapshot could not be written on: "
				 "%s", d->bytes,
				 d->write_rc == -EPIPE ? "its reader stopped"
						       : strerror(-d->write_rc));
	} else if (d->res != CURLE_OK) {
		rc = errmsg_fail(err, err_cap, -EIO, "the download failed after "
				 "%" PRIu64 " bytes: %s", d->bytes,
				 d->curl_err[0] ? d->curl_err
						: curl_easy_strerror(d->res));
	}
	download_free(d);
	return rc;
}

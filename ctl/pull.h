/*
 * pull: consentctl pull's options, shared by its modules (ctl/pull.c, the
 * loop; ctl/outbox.c, the outbox push). Set once from the command line,
 * read-only afterwards; one thread.
 */
#ifndef CONSENTD_CTL_PULL_H
#define CONSENTD_CTL_PULL_H

#include <stdbool.h>
#include <stdint.h>

struct pull_opts {
	const char *iys_url;
	uint32_t iys_code;
	const char *consentd;   /* HOST:PORT of the RPC port */
	const char *token;      /* consentd partner token, or NULL */
	const char *ca_file;    /* --iys-ca */
	const char *ops;        /* HOST:PORT of the ops port, or NULL */
	unsigned limit;         /* records per page */
	double rate_per_min;
	double interval_s;
	int timeout_ms;
	int retry_min_ms, retry_max_ms;
	bool once;
	bool skip_bad;
};


#endif

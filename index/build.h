/*
 * build: a new generation from a snapshot stream (DESIGN §2, §3.5). Reads
 * and validates the whole stream (a bad record or a bad trailer rejects it
 * whole, naming the offset and field), sizes the table for the records
 * plus headroom, inserts, and publishes generation newest+1 in the data
 * directory (index/datadir.h). Whatever was served before stays untouched
 * until the new generation is renamed into place. One builder per data
 * directory at a time; any thread (the server runs it on a background one).
 */
#ifndef CONSENTD_INDEX_BUILD_H
#define CONSENTD_INDEX_BUILD_H

#include <stddef.h>
#include <stdint.h>

struct build_result {
	uint64_t generation;
	uint64_t records;      /* distinct keys in the index */
	uint64_t stream_records;
	uint64_t watermark;    /* the snapshot header's sequence */
	int64_t created_at;
	double seconds;
};

int build_snapshot(int fd, const char *dir, struct build_result *res,
		   char *err, size_t err_cap);

/* Writes the records of the newest generation in dir as a snapshot stream
 * to fd (header sequence = its watermark). */
int build_dump(const char *dir, int fd, uint64_t *records, char *err,
	       size_t err_cap);

#endif

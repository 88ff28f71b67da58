/*
 * loadgen_hist: a log-linear latency histogram (HdrHistogram's layout,
 * which Debian does not package). A value v >= 2^7 with its top bit at
 * position e keeps its 8 leading bits: bucket (e - 6) * 128 + the 7 bits
 * below the top one. Values below 128 land in buckets 0..127 exactly, so
 * the index is continuous and the relative error at most 1/128.
 */
#include <string.h>

#include "bench/loadgen.h"

static unsigned hist_index(uint64_t v)
{
	if (v < HIST_SUB_COUNT)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	unsigned sub = (unsigned)(v >> (e - HIST_SUB_BITS)) & (HIST_SUB_COUNT - 1);
	return (e - HIST_SUB_BITS + 1) * HIST_SUB_COUNT + sub;
}

/* The largest value that maps to bucket idx. */
static uint64_t hist_upper(unsigned idx)
{
	if (idx < HIST_SUB_COUNT)
		return idx;
	unsigned e = idx / HIST_SUB_COUNT + HIST_SUB_BITS - 1;
	uint64_t sub = idx % HIST_SUB_COUNT;
	uint64_t low = (1ull << e) | (sub << (e - HIST_SUB_BITS));
	return low + ((1ull << (e - HIST_SUB_BITS)) - 1);
}

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t value)
{
	h->buckets[hist_index(value)]++;
	h->count++;
	h->sum += value;
	if (value < h->min)
		h->min = value;
	if (value > h->max)
		h->max = value;
}

void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->buckets[i] += from->buckets[i];
	into->count += from->count;
	into->sum += from->sum;
	if (from->min < into->min)
		into->min = from->min;
	if (from->max > into->max)
		into->max = from->max;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	if (q <= 0)
		return h->min;
	/* The rank of the q-quantile, 1-based, rounded up: p99 of 1000
	 * values is the 990th smallest. */
	double want = q * (double)h->count;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->buckets[i];
		if (seen >= rank) {
			uint64_t v = hist_upper(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

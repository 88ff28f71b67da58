// table_bench: the consent index on one core (index/table.c).
//
// An index of N synthetic records (core/synth.h; default 10M, from
// --records=N, CONSENTD_BENCH_RECORDS or BENCH_RECORDS) sized as the
// builder sizes it (N * 1.10), written to a file and opened both ways:
// INDEX_LOAD_ANON (anonymous memory, THP advised) and INDEX_LOAD_MMAP (the
// file mapped from the page cache). Keys are made before timing starts
// (the request path makes them while decoding), so the lookups measure the
// table: one at a time, and in batches of 32 (prefetch every home bucket,
// then probe), for keys present (hit) and absent (miss), in random order.
// The /limit cases run the batch against a second index of the same
// records created for exactly N (index_create(N)), so filled to the 0.92
// load limit, where probes are longest. Batch cases also report
// buckets_per_lookup, the mean probe length (index_probe_buckets).
// BM_insert is the builder's insert phase (staged keys, prefetch ahead)
// and BM_key_make what making a key costs.
#include <benchmark/benchmark.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

extern "C" {
#include "core/enums.h"
#include "core/recipient.h"
#include "core/synth.h"
#include "index/table.h"
}

namespace {

constexpr uint64_t kSeed = 1;
constexpr size_t kSample = 1 << 20; // keys per lookup benchmark
constexpr size_t kBatch = 32;
constexpr size_t kAhead = 16;       // insert prefetch distance

uint64_t g_records = 10000000;

struct staged {
	index_key key;
	consent_value value;
};

struct fixture {
	bool ready = false;
	uint8_t secret[INDEX_SECRET_BYTES];
	std::vector<staged> all;       // every record's key and value
	std::vector<index_key> hits;   // kSample present keys, random order
	std::vector<index_key> misses; // kSample absent keys
	std::string path;
	struct index *by_mode[2] = {nullptr, nullptr};
	struct index *at_limit = nullptr; // the same records at the load limit
};

fixture g;

bool make_key(struct index *ix, const struct synth_record &s, index_key *key)
{
	recipient r;
	const char *why;
	if (recipient_normalize(s.recipient, strlen(s.recipient), &r, &why) < 0)
		return false;
	index_key_make(ix, &r, s.brand_code, s.rtype, s.channel, key);
	return true;
}

uint64_t capacity_for(uint64_t n)
{
	return n + n / 10 + 1;
}

// Inserts every staged record as the builder does into an index created
// for capacity records; returns the index.
struct index *insert_all(uint64_t capacity)
{
	struct index *ix;
	if (index_create(capacity, g.secret, &ix) < 0)
		abort();
	const size_t n = g.all.size();
	for (size_t i = 0; i < n; i++) {
		if (i + kAhead < n)
			index_prefetch(ix, &g.all[i + kAhead].key);
		if (index_apply_writer(ix, &g.all[i].key, &g.all[i].value) < 0)
			abort();
	}
	return ix;
}

void setup()
{
	if (g.ready)
		return;
	for (size_t i = 0; i < sizeof(g.secret); i++)
		g.secret[i] = (uint8_t)(i * 131 + 7);
	struct index *maker;
	if (index_create(0, g.secret, &maker) < 0)
		abort();
	fprintf(stderr, "table_bench: staging %llu records...\n",
		(unsigned long long)g_records);
	g.all.resize(g_records);
	for (uint64_t i = 0; i < g_records; i++) {
		struct synth_record s;
		synth_record(kSeed, g_records, i, &s);
		if (!make_key(maker, s, &g.all[i].key))
			abort();
		g.all[i].value.status = s.status;
		g.all[i].value.source = s.source;
		g.all[i].value.consent_date = s.consent_date;
	}
	uint64_t x = 0x2545f4914f6cdd1dULL;
	size_t sample = g_records < kSample ? (size_t)g_records : kSample;
	for (size_t j = 0; j < sample; j++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		g.hits.push_back(g.all[x % g_records].key);
		struct synth_record s;
		synth_absent(kSeed, g_records, j, &s);
		index_key k;
		if (!make_key(maker, s, &k))
			abort();
		g.misses.push_back(k);
	}
	index_destroy(maker);

	struct index *ix = insert_all(capacity_for(g.all.size()));
	char tmpl[] = "/tmp/table_bench.XXXXXX";
	if (mkdtemp(tmpl) == nullptr)
		abort();
	g.path = std::string(tmpl) + "/index";
	if (index_write(ix, g.path.c_str()) < 0)
		abort();
	index_destroy(ix);
	for (int mode = 0; mode < 2; mode++) {
		char err[256];
		if (index_open(g.path.c_str(), (enum index_load_mode)mode,
			       &g.by_mode[mode], err, sizeof(err)) < 0) {
			fprintf(stderr, "table_bench: %s\n", err);
			abort();
		}
	}
	g.at_limit = insert_all(g.all.size());
	g.ready = true;
}

void teardown()
{
	for (struct index *ix : g.by_mode)
		index_destroy(ix);
	index_destroy(g.at_limit);
	if (!g.path.empty()) {
		unlink(g.path.c_str());
		rmdir(g.path.substr(0, g.path.rfind('/')).c_str());
	}
}

// AnonHugePages of this process, in MiB: did THP actually back the table?
double anon_huge_mib()
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	if (f == nullptr)
		return -1;
	char line[256];
	double kb = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lf kB", &kb) == 1)
			break;
	fclose(f);
	return kb / 1024;
}

void counters(benchmark::State &state, const struct index *ix)
{
	struct index_info info;
	index_info(ix, &info);
	state.counters["bytes_per_record"] =
		(double)info.bytes / (double)info.n_records;
	state.counters["records"] = (double)info.n_records;
	state.counters["thp"] = info.huge_pages;
}

void BM_lookup(benchmark::State &state, int mode, bool hit)
{
	setup();
	const struct index *ix = g.by_mode[mode];
	const std::vector<index_key> &keys = hit ? g.hits : g.misses;
	size_t i = 0, found = 0;
	consent_value v;
	for (auto _ : state) {
		found += index_lookup(ix, &keys[i], &v);
		benchmark::DoNotOptimize(v);
		if (++i == keys.size())
			i = 0;
	}
	state.SetItemsProcessed((int64_t)state.iterations());
	counters(state, ix);
	state.counters["found_ratio"] = (double)found / (double)state.iterations();
	if (mode == INDEX_LOAD_ANON)
		state.counters["anon_huge_MiB"] = anon_huge_mib();
}

// mode -1: the index at the load limit (anonymous memory).
void BM_lookup_batch(benchmark::State &state, int mode, bool hit)
{
	setup();
	const struct index *ix = mode < 0 ? g.at_limit : g.by_mode[mode];
	const std::vector<index_key> &keys = hit ? g.hits : g.misses;
	size_t i = 0, found = 0;
	consent_value v[kBatch];
	bool f[kBatch];
	for (auto _ : state) {
		index_lookup_batch(ix, &keys[i], kBatch, v, f);
		benchmark::DoNotOptimize(v);
		for (size_t j = 0; j < kBatch; j++)
			found += f[j];
		i += kBatch;
		if (i + kBatch > keys.size())
			i = 0;
	}
	state.SetItemsProcessed((int64_t)(state.iterations() * kBatch));
	counters(state, ix);
	state.counters["found_ratio"] =
		(double)found / (double)(state.iterations() * kBatch);
	// The layout's probe length for these keys, outside the timing.
	uint64_t reads = 0;
	size_t n = keys.size() < 65536 ? keys.size() : 65536;
	for (size_t j = 0; j < n; j++)
		reads += index_probe_buckets(ix, &keys[j]);
	state.counters["buckets_per_lookup"] = (double)reads / (double)n;
}

void BM_insert(benchmark::State &state)
{
	setup();
	struct index *ix = nullptr;
	for (auto _ : state) {
		ix = insert_all(capacity_for(g.all.size()));
		state.PauseTiming();
		counters(state, ix);
		index_destroy(ix);
		state.ResumeTiming();
	}
	state.SetItemsProcessed((int64_t)(state.iterations() * g.all.size()));
}

void BM_key_make(benchmark::State &state, bool email)
{
	setup();
	struct index *ix = g.by_mode[INDEX_LOAD_ANON];
	// Recipients in text, normalised and keyed per iteration, as a check
	// does it.
	std::vector<struct synth_record> recs;
	for (uint64_t i = 0; recs.size() < 4096 && i < g_records; i++) {
		struct synth_record s;
		synth_record(kSeed, g_records, i, &s);
		if ((s.channel == CHANNEL_EPOSTA) == email)
			recs.push_back(s);
	}
	if (recs.empty()) {
		state.SkipWithError("no such records");
		return;
	}
	size_t i = 0;
	for (auto _ : state) {
		index_key k;
		make_key(ix, recs[i], &k);
		benchmark::DoNotOptimize(k);
		if (++i == recs.size())
			i = 0;
	}
	state.SetItemsProcessed((int64_t)state.iterations());
}

} // namespace

int main(int argc, char **argv)
{
	const char *env = getenv("CONSENTD_BENCH_RECORDS");
	if (env == nullptr)
		env = getenv("BENCH_RECORDS");
	if (env != nullptr && strtoull(env, nullptr, 10) > 0)
		g_records = strtoull(env, nullptr, 10);
	// --records=N is ours; Google Benchmark must not see it.
	int out = 1;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--records=", 10) == 0) {
			g_records = strtoull(argv[i] + 10, nullptr, 10);
			continue;
		}
		if (strcmp(argv[i], "--help") == 0)
			printf("table_bench [--records=N] (default 10000000; or "
			       "CONSENTD_BENCH_RECORDS) [benchmark flags]\n");
		argv[out++] = argv[i];
	}
	argc = out;
	if (g_records == 0 || g_records > SYNTH_RECORDS_MAX) {
		fprintf(stderr, "table_bench: --records must be 1..%llu\n",
			(unsigned long long)SYNTH_RECORDS_MAX);
		return 2;
	}

	benchmark::RegisterBenchmark("BM_insert", BM_insert)
		->Iterations(2)->Unit(benchmark::kMillisecond);
	const char *names[2] = {"anon", "mmap"};
	for (int mode = 0; mode < 2; mode++) {
		for (int hit = 1; hit >= 0; hit--) {
			std::string sfx = std::string("/") + names[mode] +
					  (hit ? "/hit" : "/miss");
			benchmark::RegisterBenchmark(("BM_lookup" + sfx).c_str(),
						     BM_lookup, mode, (bool)hit);
			benchmark::RegisterBenchmark(("BM_lookup_batch32" + sfx).c_str(),
						     BM_lookup_batch, mode, (bool)hit);
		}
	}
	for (int hit = 1; hit >= 0; hit--)
		benchmark::RegisterBenchmark(hit ? "BM_lookup_batch32/limit/hit"
						 : "BM_lookup_batch32/limit/miss",
					     BM_lookup_batch, -1, (bool)hit);
	benchmark::RegisterBenchmark("BM_key_make/phone", BM_key_make, false);
	benchmark::RegisterBenchmark("BM_key_make/email", BM_key_make, true);

	benchmark::Initialize(&argc, argv);
	if (benchmark::ReportUnrecognizedArguments(argc, argv))
		return 1;
	benchmark::RunSpecifiedBenchmarks();
	benchmark::Shutdown();
	teardown();
	return 0;
}

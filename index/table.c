/*
 * table: the consent index, one generation of it.
 *
 * Why it looks like this
 * ----------------------
 * Three facts of the workload decide the layout. There are 10^8 to 10^9
 * consent keys, so an entry has to stay at 16 bytes (DESIGN §2: at most
 * 20 bytes of RAM per record at full load). Every lookup is a random DRAM
 * access (~300-500 ns here), so the common lookup must touch exactly one
 * cache line, and a batch of lookups must be able to overlap its misses.
 * And there is exactly one writer and nothing is ever deleted (İYS never
 * removes a consent; a withdrawal is a RET record), so a key, once written,
 * never moves and never leaves. That last fact is what lets readers run
 * without a lock, a seqlock or a retry loop.
 *
 * Buckets. The table is one array of n_buckets 64-byte, 64-aligned
 * buckets, each holding four entries of two 64-bit words {key, val}:
 *
 *   key word   the low 64 key bits
 *   val word   bit  0       status: 0 ONAY, 1 RET
 *              bits 1-5     source as a dense code 1..24, never 0
 *              bits 6-36    consent_date - INDEX_EPOCH in seconds (31 bits:
 *                           good to 2083; other dates are -EINVAL)
 *              bits 37-55   the high key bits 0-18 (19)
 *              bits 56-58   the probe index: how many steps along its probe
 *                           sequence the entry sits, 7 for 7 or more
 *              bits 59-61   three of the bucket's twelve overflow cells
 *              bits 62-63   the channel (high key bits 25-26)
 *
 * val == 0 means "empty slot": a stored source code is never 0, so an
 * occupied slot never has a zero val, and the whole state of a slot lives
 * in one word that can be published with one store. Source codes: wire
 * values 1-13 are 1-13, 32-40 are 14-22, SOURCE_OTHER (63) and anything
 * unknown 23, SOURCE_UNSPECIFIED (0) 24.
 *
 * Keys: 85 bits (the key word and val's 19 + 2), with a 2-bit channel
 * field on top (1 ARAMA, 2 MESAJ, 3 EPOSTA) so that phone keys and e-mail
 * keys live in disjoint spaces and can never match each other.
 *   phone   number (50 bits: E.164 has at most 15 digits < 2^50), brand
 *           (32 bits: the whole wire field, so no brand code can alias
 *           another; 14 bits in the key word, 18 in val), rtype (1),
 *           channel (2). 85 bits, exact: no hashing and no false
 *           positives, and index_foreach gives the record back whole.
 *   e-mail  channel 3 and 83 bits of a fingerprint: XXH3-128 keyed with
 *           the index's secret over (rtype, brand, normalised address),
 *           its low 64 bits in the key word, the low 19 bits of its high
 *           half in val. (Format 1 stored 25; the 6 bits between rtype
 *           and channel, which phones never used, now hold the probe
 *           index and the cells.) Brand and rtype are inside the
 *           fingerprint, so an e-mail key cannot be turned back into an
 *           address: a dump
 *           takes the addresses from the generation's `emails` file.
 * A key that no caller should have made (a phone on EPOSTA, an e-mail on
 * ARAMA) gets channel field 0, which is never stored: such a lookup
 * misses and index_apply_writer refuses it with -EINVAL.
 *
 * Home bucket. Every key carries a 64-bit hash: for phones XXH3-64 keyed
 * with the secret over the 85 key bits, for e-mails the high half of the
 * fingerprint. fastrange, ((u128)hash * n_buckets) >> 64, maps it to a
 * bucket with one multiply and any bucket count (no power of two, no
 * division). The secret is random per index and never leaves the process
 * (DESIGN §5.2), so nobody can craft keys that pile into one bucket.
 *
 * Why 83 stored bits meet DESIGN §1.2's 96. fastrange takes the bucket
 * from the high bits of the hash: with 2^k buckets, bits 63..64-k of the
 * fingerprint's high half. The bits stored in val are that half's bits
 * 0-18, disjoint from them for any table under 2^45 buckets, so the home
 * bucket is ~k more bits of the fingerprint that cost no memory. A probe
 * compares a key with the entries of the w buckets it visits, and past
 * the home only with entries whose probe index matches; w is 1.12 for a
 * miss at the build load and 1.3-1.4 at the load limit (see Sizing), so
 * an absent e-mail matches a stored one with chance about 4w * 2^-83 per
 * lookup, which is what a plain set of n fingerprints of 83 + k - log2(w)
 * bits gives: at 10^8 records (k ~ 25) 108 bits at either load, at 10^9
 * 111. (Format 1 had 89 bits but w = 5.5 and 20: 111 and 109 at 10^8, so
 * the six bits cost ~3 effective bits at the build load and ~1 at the
 * limit.) Two stored e-mails share an identity with chance about
 * n * 2w * 2^-83 (3 * 10^-16 at 10^9). Tables under ~11,000 buckets
 * (~36,000 records) fall below 96 effective bits, but the chance per
 * lookup, 4w * 2^-83 ~ 2^-80.5, does not depend on the size.
 *
 * Collisions between homes: double hashing. A key's probe sequence is
 * home, home + step, home + 2 step, ... modulo n_buckets, its step in
 * 1..n_buckets-1 drawn from a mix of the stored key bits (key_mix), and
 * n_buckets is prime (sizes_for rounds up; open checks), so a sequence
 * visits every bucket. A key goes to the first bucket of its sequence
 * with an empty slot, and records its probe index i there (capped at 7).
 * Linear probing, format 1's scheme, clusters: at 0.92 a tenth of its
 * entries sat 3 or more buckets from home, 2% 15 or more, and a miss read
 * 20 buckets; with its own step per key, a run of full buckets does not
 * grow into its neighbours' (at 0.92, 5.8% of entries need 3 steps or
 * more, 0.09% 15 or more).
 *
 * Overflow cells (cheap misses). Each bucket has twelve one-bit cells,
 * three in bits 59-61 of each slot's val; each key picks one from its
 * mix (overflow_cell). When the writer places a key past its home, it
 * first sets that key's cell in the home bucket. A lookup reads its home
 * bucket; if the key is not there, the bucket has an empty slot, or its
 * cell is clear, the key is absent: only keys whose home overflowed
 * with a key of the same cell go on along their sequence (and then, as
 * before, stop at a match or at the first bucket with an empty slot: a
 * present key lies before it). Cells are only ever set in full buckets
 * (a key leaves its home only when the home is full), so they never sit
 * in an empty slot and val == 0 still means empty. Where the bits come
 * from: phones used 85 of the 91 key bits, so the 6 between rtype and
 * channel were free for them, and e-mails give up 6 fingerprint bits
 * (above); the date range (31 bits, to 2083) and the 5-bit source code
 * (24 of 32 values) are left alone. Twelve cells rather than a counter:
 * a key's cell is set only by keys with its home and its cell, so a miss
 * goes on only when one of the ~0.8 keys per bucket displaced at 0.92
 * shares its cell (1 in 12); a per-bucket count or "passed" bit would be
 * set in most full buckets.
 *
 * Why the probe index is stored. index_open must be able to check the
 * cells (a clear cell that a stored key needs would make that key read
 * absent), so it must know each displaced entry's home. A phone's home
 * could be recomputed from its key, but an e-mail's is bits of its
 * fingerprint that the file does not hold (that is where the 96 bits
 * come from). So the entry holds its probe index i, and since the step
 * comes from the stored bits, home = position - i * step. The index is
 * part of what a probe compares (an entry matches a key only at the
 * probe index it claims), so a wrong index in a file is a different key,
 * never a wrong mark: check_marks verifies that the buckets an entry
 * passed are full and that its home carries its cell, and refuses the
 * file otherwise. For i >= 7 (stored as 7: 1.1% of entries at 0.92,
 * 0.2% at 0.84) the home is one of the full buckets 7, 8, ... steps back
 * before the first one with room. The writer set the cell in the true
 * home, so open accepts the run when one of them carries it (a file
 * index_write wrote always does, and open then writes nothing: a store
 * would copy a page of an MMAP mapping); when none does it sets the cell
 * in each of them: a superset, which only costs a miss a read.
 *
 * Sizing. The load limit is 0.92 of the slots: index_create(capacity)
 * takes ceil(capacity / 0.92) slots rounded up to whole buckets and then
 * to a prime bucket count (primes are ~ln n apart: a few buckets more), and
 * inserting past the limit is -ENOSPC (the caller builds a bigger
 * generation). The builder asks for records * 1.10, headroom for changes,
 * so a fresh generation is ~84% full: 16 / 0.84 = 19 bytes per record of
 * RAM, and 17.4 bytes at the limit (index_info().bytes / n_records).
 * Probe lengths, simulated for this layout (random hashes, keys inserted
 * in random order, 4-slot buckets) and measured by table_test through
 * index_probe_buckets: at the build load (0.84) a hit reads 1.3 buckets
 * and a miss 1.12 on average; at the 0.92 limit 1.5 and 1.31 (the same
 * after a reopen: open keeps the writer's cells). Format 1's linear probing
 * read 1.5 and 5.5 at 0.84, 2.3 and 20 at 0.92. The later buckets of a
 * sequence are random lines, not the next one, so index_lookup_batch
 * moves all of a window's keys forward one bucket per round, prefetching
 * each key's next bucket before reading anyone's: the later lines of the
 * displaced hits and of the few misses that go on are in flight together.
 *
 * Concurrency. One writer, any number of readers, no locks:
 *  - insert: the writer stores the key word (relaxed), then the val word
 *    with memory_order_release. A reader loads val with acquire; if it
 *    sees the new val it also sees the key (the release/acquire pair).
 *    If it sees 0 it stops there: the key is simply not there yet.
 *  - update: the writer stores a new val with the same key bits
 *    (release). A reader gets the old word or the new one, both whole:
 *    status, source and date never tear, because they are one word.
 *  - readers stop at the first val == 0, then load the key word (relaxed:
 *    ordered by the acquire on val) and compare key word and val's key
 *    bits. Keys never move, so no seqlock and no retry are needed.
 *  - overflow cells: to place a key past its home, the writer first sets
 *    its cell in the home (a release store of that slot's val with the
 *    bit or-ed in), then stores the entry as above. Cells are only ever
 *    set, and an update of a val keeps its cells, so the cell word's
 *    values only gain bits. A reader loads the cell word with acquire.
 *    An insert finished before a lookup started (happens-before, e.g. the
 *    reader saw n_records or a watermark stored after it) has its cell
 *    store before that too, so by coherence the reader reads that value
 *    or a later one, both with the bit: an old key is never missed. A
 *    reader racing the insert may read the cell clear, or set with the
 *    entry not yet visible: both say "absent", which for a key whose
 *    insert has not finished is "not there yet". A set cell with no key
 *    behind it only costs reads.
 *  - the meta fields readers read (watermark, data_as_of, n_records,
 *    generation) are _Atomic in struct index; see index_set_meta_writer.
 * Freeing an index is the server's business: it swaps generations under
 * RCU and calls index_destroy after the grace period.
 *
 * Order rule (DESIGN §2), index_apply_writer: values of one key are
 * ranked by (consent_date, status with RET above ONAY, source code) and
 * the stored value is replaced only by a higher rank. So an older date is
 * skipped, an equal date lets a RET beat an ONAY, an identical value is
 * skipped; and because the rank is a total order the result is the
 * maximum of everything applied, whatever the arrival order (the source
 * tiebreak only matters for two same-date, same-status records, which
 * İYS itself refuses). The builder uses the same function for a key a
 * snapshot holds twice.
 *
 * Memory. INDEX_LOAD_ANON reads the file into anonymous memory aligned
 * to 2 MiB with madvise(MADV_HUGEPAGE), hashing and checking each chunk as
 * it arrives; page-cache mappings do not get transparent huge pages, and
 * a random access costs ~317 ns with them against ~487 ns without (DESIGN
 * §2). INDEX_LOAD_MMAP maps the file MAP_PRIVATE (copy on write, so the
 * writer can still update) and reports no huge pages; it needs no second
 * copy of the data. bench/table_bench.cc measures both. But anonymous
 * memory cannot be evicted (no swap), and growth, a snapshot swap or a
 * rebuild holds two tables at once, so ANON is for tables of which 2.5
 * fit (index_load_choose, INDEX_LOAD_AUTO: README "Memory"). Beyond that
 * the server serves a working copy of the generation (index_copy_file: a
 * private mapping copies each page a change touches, and a day's changes
 * touch most), and the tables those operations make are working files
 * too (index_create_file):
 * MAP_SHARED mappings of a file of their own, which the writer fills and
 * changes and readers read like any table, and whose pages are page
 * cache, written back and evicted by the kernel as it needs the memory.
 * A working file is never a generation (its header page stays zero and
 * index_write publishes a copy), so a change never touches a published
 * file, and its blocks are allocated when it is made, so that a full disk
 * is an error there and not a SIGBUS at a store.
 *
 * File. A 4096-byte header (struct index_file_header below: magic,
 * version, sizes, counts, meta, the secret, the XXH3-64 of the bucket
 * array, the XXH3-64 of the header bytes before it, zero padding) and
 * then the bucket array, little-endian as in memory. index_open checks
 * magic, version, sizes against the file size (and the bucket count for
 * a prime), both checksums, the padding, each entry's fields, the record
 * count against the occupied slots and the overflow cells against the
 * entries (check_marks) before it trusts anything, so a lookup cannot
 * fail afterwards. check_marks is the one part that is not a sequential
 * pass: it reads the home of each displaced entry (~18% of them at the
 * build load), random lines prefetched in windows of 64, ~15 ns per
 * record (at 20M records, open went from 0.17 to 0.45 s anonymous, 0.29
 * to 0.62 s mapped). Format 1 files (linear probing, no cells) are refused
 * with a message to rebuild: their entries would have to move to their
 * double-hashing places, and an e-mail entry's home is not in the file.
 * index_write goes through a temp file, fsync, rename, fsync of the
 * directory.
 */
#include "index/table.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Inline XXH3: a phone key's 16-byte hash then costs a few ns, no call. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/enums.h"
#include "core/errmsg.h"
#include "core/fsutil.h"

#define INDEX_MAGIC "CONSENTX"
#define INDEX_FORMAT_VERSION 2 /* 1: linear probing, no overflow cells */
#define INDEX_HEADER_BYTES 4096
#define BUCKET_SLOTS 4
#define BUCKET_BYTES 64
#define LOAD_PCT 92 /* load limit: 92% of the slots */
#define HUGE_PAGE_BYTES (2u << 20)
#define IO_CHUNK_BYTES (1u << 20) /* read+hash+check unit: stays in L2 */
#define BATCH_WINDOW 32 /* keys in flight in a batch lookup */

/* val word fields. */
#define VAL_RET 1ULL
#define VAL_SOURCE_SHIFT 1
#define VAL_SOURCE_MASK 0x1fULL
#define VAL_DATE_SHIFT 6
#define VAL_DATE_BITS 31
#define VAL_DATE_MASK ((1ULL << VAL_DATE_BITS) - 1)
#define VAL_KEYHI_SHIFT 37
#define VAL_PROBE_SHIFT 56 /* bits 56-58: the probe index, capped */
#define VAL_PROBE_MASK (7ULL << VAL_PROBE_SHIFT)
#define PROBE_CAP 7        /* probe field 7: the 7th probe or later */
#define VAL_CELL_SHIFT 59  /* bits 59-61: three overflow cells */
#define VAL_CELL_MASK (7ULL << VAL_CELL_SHIFT)
#define CELLS_PER_SLOT 3
#define BUCKET_CELLS (CELLS_PER_SLOT * BUCKET_SLOTS)
/* The key bits of a val word, and what a probe compares: those and the
 * probe index. */
#define VAL_KEYHI_MASK ((~0ULL << VAL_KEYHI_SHIFT) & \
			~(VAL_PROBE_MASK | VAL_CELL_MASK))
#define VAL_ID_MASK (VAL_KEYHI_MASK | VAL_PROBE_MASK)

/* Fields of the 27 high key bits (positions within them). */
#define KEYHI_CHANNEL_SHIFT 25
#define KEYHI_RTYPE_SHIFT 18        /* phones */
#define KEYHI_BRAND_MASK 0x3ffffULL /* phones: brand bits 14-31 */
#define KEYHI_FP_MASK 0x7ffffULL   /* e-mails: 19 fingerprint bits */

#define PHONE_BITS 50
#define PHONE_MASK ((1ULL << PHONE_BITS) - 1)
#define BRAND_LO_BITS 14 /* brand bits in the key word, above the phone */

#define SOURCE_CODE_OTHER 23
#define SOURCE_CODE_UNSPECIFIED 24

static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
static_assert(BATCH_WINDOW <= 256, "batch positions are uint8_t");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	      "the file format is the little-endian memory image");

/* Entries are read and written as whole atomic words; see the essay. */
struct index_slot {
	_Atomic uint64_t key;
	_Atomic uint64_t val;
};

struct index_bucket {
	_Alignas(BUCKET_BYTES) struct index_slot slot[BUCKET_SLOTS];
};

static_assert(sizeof(struct index_slot) == 16, "16-byte entries");
static_assert(sizeof(struct index_bucket) == BUCKET_BYTES, "one cache line");
static_assert(_Alignof(struct index_bucket) == BUCKET_BYTES, "64-aligned");

/* On-disk header: fixed-width fields, explicit padding, all of it either
 * covered by header_xxh3 or required to be zero. */
struct index_file_header {
	char magic[8];              /* "CONSENTX" */
	uint32_t format_version;    /* INDEX_FORMAT_VERSION */
	uint32_t header_bytes;      /* 4096: the bucket array starts here */
	uint32_t bucket_bytes;      /* 64 */
	uint32_t reserved0;         /* 0 */
	uint64_t n_buckets;
	uint64_t n_records;         /* occupied slots */
	uint64_t capacity;          /* the load limit, from n_buckets */
	uint64_t generation;
	uint64_t watermark;
	int64_t created_at;
	int64_t data_as_of;
	uint8_t secret[INDEX_SECRET_BYTES];
	uint64_t buckets_xxh3;      /* XXH3-64 of the bucket array */
	uint64_t header_xxh3;       /* XXH3-64 of the bytes before this field */
	uint8_t padding[INDEX_HEADER_BYTES - 288]; /* zero */
};

static_assert(sizeof(struct index_file_header) == INDEX_HEADER_BYTES,
	      "header is one page");
static_assert(offsetof(struct index_file_header, n_buckets) == 24, "layout");
static_assert(offsetof(struct index_file_header, data_as_of) == 72, "layout");
static_assert(offsetof(struct index_file_header, secret) == 80, "layout");
static_assert(offsetof(struct index_file_header, buckets_xxh3) == 272, "layout");
static_assert(offsetof(struct index_file_header, header_xxh3) == 280, "layout");
static_assert(offsetof(struct index_file_header, padding) == 288, "layout");

struct index {
	struct index_bucket *buckets;
	uint64_t n_buckets;
	uint64_t limit;             /* records allowed: LOAD_PCT of the slots */
	void *map;                  /* what to munmap */
	size_t map_bytes;
	bool huge_pages;
	bool mapped;                /* map is a file mapping */
	/* A table filled in its file (index_create_file): the file, open
	 * read-write, and its path; file_path NULL for any other index. */
	char *file_path;
	int file_fd;
	uint64_t released;          /* bytes of the array released so far */
	/* Read by any thread, written by the writer; see index_set_meta_writer
	 * and index_apply_writer for what each store pairs with. */
	_Atomic int64_t created_at;
	_Atomic uint64_t n_records;
	_Atomic uint64_t generation;
	_Atomic uint64_t watermark;
	_Atomic int64_t data_as_of;
	uint8_t secret[INDEX_SECRET_BYTES];
};

/* Source: wire value <-> dense 5-bit code (never 0, so val != 0). */
static uint64_t source_code(uint8_t wire)
{
	if (wire >= 1 && wire <= 13)
		return wire;
	if (wire >= 32 && wire <= 40)
		return wire - 18u;
	if (wire == 0)
		return SOURCE_CODE_UNSPECIFIED;
	return SOURCE_CODE_OTHER;
}

static uint8_t source_wire(uint64_t code)
{
	if (code <= 13)
		return (uint8_t)code;
	if (code <= 22)
		return (uint8_t)(code + 18);
	if (code == SOURCE_CODE_OTHER)
		return SOURCE_OTHER;
	return SOURCE_NONE; /* SOURCE_CODE_UNSPECIFIED; open refuses others */
}

static uint64_t home_bucket(const struct index *ix, uint64_t hash)
{
	return (uint64_t)(((unsigned __int128)hash * ix->n_buckets) >> 64);
}

/*
 * The probe sequence's step and the key's overflow cell, from the stored
 * key bits alone (the key word and val's key bits), so that index_open
 * can walk an entry's sequence back to its home. A splitmix64 finaliser:
 * phone key words are not random. The step is 1..n_buckets-1, and
 * n_buckets is prime, so the sequence visits every bucket.
 */
static uint64_t key_mix(uint64_t lo, uint64_t hi)
{
	uint64_t z = lo ^ (hi >> VAL_KEYHI_SHIFT) * 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t probe_step(const struct index *ix, uint64_t mix)
{
	return 1 + (uint64_t)(((unsigned __int128)mix * (ix->n_buckets - 1)) >> 64);
}

static unsigned overflow_cell(uint64_t mix)
{
	return (unsigned)(((mix & 0xffffffffULL) * BUCKET_CELLS) >> 32);
}

static uint64_t next_bucket(const struct index *ix, uint64_t b, uint64_t step)
{
	b += step;
	return b >= ix->n_buckets ? b - ix->n_buckets : b;
}

static uint64_t prev_bucket(const struct index *ix, uint64_t b, uint64_t step)
{
	return b >= step ? b - step : b + ix->n_buckets - step;
}

/* What a probe compares with the val word at probe index i. */
static uint64_t probe_want(const struct index_key *key, uint64_t i)
{
	return key->bits[1] | (i < PROBE_CAP ? i : PROBE_CAP) << VAL_PROBE_SHIFT;
}

static uint64_t cell_bit(unsigned cell)
{
	return 1ULL << (VAL_CELL_SHIFT + cell % CELLS_PER_SLOT);
}

static bool prime(uint64_t n)
{
	if (n < 2)
		return false;
	for (uint64_t d = 2; d <= n / d; d++)
		if (n % d == 0)
			return false;
	return true;
}

static uint64_t limit_for(uint64_t n_buckets)
{
	return n_buckets * BUCKET_SLOTS * LOAD_PCT / 100;
}

static void decode_value(uint64_t v, struct consent_value *out)
{
	out->status = (v & VAL_RET) ? STATUS_RET : STATUS_ONAY;
	out->source = source_wire((v >> VAL_SOURCE_SHIFT) & VAL_SOURCE_MASK);
	out->consent_date = (int64_t)((v >> VAL_DATE_SHIFT) & VAL_DATE_MASK) +
			    INDEX_EPOCH;
}

/*
 * Memory for the bucket array: anonymous, 2 MiB aligned so that every
 * huge page is whole, with MADV_HUGEPAGE (THP is "madvise" on Debian).
 * The unaligned head and tail of the over-sized reservation go back at
 * once.
 */
static int anon_alloc(struct index *ix, size_t bytes)
{
	size_t len = (bytes + HUGE_PAGE_BYTES - 1) & ~(size_t)(HUGE_PAGE_BYTES - 1);
	size_t reserve = len + HUGE_PAGE_BYTES;
	uint8_t *p = mmap(NULL, reserve, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	uintptr_t start = ((uintptr_t)p + HUGE_PAGE_BYTES - 1) &
			  ~(uintptr_t)(HUGE_PAGE_BYTES - 1);
	size_t head = start - (uintptr_t)p;
	if (head != 0)
		munmap(p, head);
	if (reserve - head > len)
		munmap((uint8_t *)start + len, reserve - head - len);
	ix->map = (void *)start;
	ix->map_bytes = len;
	ix->huge_pages = madvise(ix->map, len, MADV_HUGEPAGE) == 0;
	ix->buckets = ix->map;
	return 0;
}

static int sizes_for(uint64_t capacity, uint64_t *n_buckets)
{
	/* Bound so that slot and byte counts cannot overflow. */
	if (capacity > (UINT64_MAX / 100) / BUCKET_BYTES)
		return -EINVAL;
	uint64_t n_slots = (capacity * 100 + LOAD_PCT - 1) / LOAD_PCT;
	uint64_t nb = (n_slots + BUCKET_SLOTS - 1) / BUCKET_SLOTS;
	/* Prime, so that every probe step visits every bucket. */
	nb = nb < 2 ? 2 : nb;
	while (!prime(nb))
		nb++;
	*n_buckets = nb;
	return 0;
}

/* The fields of an empty table of n_buckets whose slots are zero. The
 * index is not shared yet, so plain initial values need no ordering. */
static void index_init_empty(struct index *ix, uint64_t n_buckets)
{
	ix->n_buckets = n_buckets;
	ix->limit = limit_for(n_buckets);
	atomic_init(&ix->n_records, 0);
	atomic_init(&ix->generation, 0);
	atomic_init(&ix->watermark, 0);
	atomic_init(&ix->created_at, (int64_t)time(NULL));
	atomic_init(&ix->data_as_of, atomic_load(&ix->created_at));
}

int index_create(uint64_t capacity, const uint8_t *secret, struct index **out)
{
	uint64_t n_buckets;
	int rc = sizes_for(capacity, &n_buckets);
	if (rc < 0)
		return rc;
	if (n_buckets > SIZE_MAX / BUCKET_BYTES)
		return -ENOMEM;
	struct index *ix = calloc(1, sizeof(*ix));
	if (ix == NULL)
		return -ENOMEM;
	if (secret != NULL) {
		memcpy(ix->secret, secret, INDEX_SECRET_BYTES);
	} else if (getrandom(ix->secret, INDEX_SECRET_BYTES, 0) !=
		   INDEX_SECRET_BYTES) {
		free(ix);
		return -EIO;
	}
	rc = anon_alloc(ix, n_buckets * BUCKET_BYTES);
	if (rc < 0) {
		free(ix);
		return rc;
	}
	/* Fresh anonymous memory is zero: every slot is empty. */
	index_init_empty(ix, n_buckets);
	*out = ix;
	return 0;
}

void index_destroy(struct index *ix)
{
	if (ix == NULL)
		return;
	if (ix->map != NULL)
		munmap(ix->map, ix->map_bytes);
	if (ix->file_path != NULL) {
		close(ix->file_fd);
		free(ix->file_path);
	}
	free(ix);
}

void index_info(const struct index *ix, struct index_info *out)
{
	/* Acquire loads pair with the release stores in index_set_meta_writer
	 * (and n_records with index_apply_writer's), so a reader that sees a
	 * watermark also sees every entry applied before it was set. */
	out->n_records = atomic_load_explicit(&ix->n_records,
					      memory_order_acquire);
	out->generation = atomic_load_explicit(&ix->generation,
					       memory_order_acquire);
	out->watermark = atomic_load_explicit(&ix->watermark,
					      memory_order_acquire);
	out->data_as_of = atomic_load_explicit(&ix->data_as_of,
					       memory_order_acquire);
	out->n_buckets = ix->n_buckets;
	out->capacity = ix->limit;
	out->bytes = ix->n_buckets * BUCKET_BYTES;
	out->created_at = atomic_load_explicit(&ix->created_at,
					       memory_order_acquire);
	out->huge_pages = ix->huge_pages;
	out->mapped = ix->mapped;
}

void index_set_meta_writer(struct index *ix, uint64_t generation,
			   uint64_t watermark, int64_t created_at,
			   int64_t data_as_of)
{
	/* Release: pairs with the acquire loads in index_info, so the entries
	 * written before this watermark are visible to whoever reads it. */
	atomic_store_explicit(&ix->created_at, created_at, memory_order_release);
	atomic_store_explicit(&ix->generation, generation, memory_order_release);
	atomic_store_explicit(&ix->watermark, watermark, memory_order_release);
	atomic_store_explicit(&ix->data_as_of, data_as_of, memory_order_release);
}

/* ---- keys ---- */

void index_key_make(const struct index *ix, const struct recipient *r,
		    uint32_t brand_code, int rtype, int channel,
		    struct index_key *out)
{
	uint64_t rbit = rtype == RTYPE_TACIR ? 1 : 0;

	if (r->kind == RECIPIENT_PHONE) {
		uint64_t ch = (channel == CHANNEL_ARAMA ||
			       channel == CHANNEL_MESAJ) ? (uint64_t)channel : 0;
		uint64_t lo = (r->phone & PHONE_MASK) |
			      ((uint64_t)brand_code << PHONE_BITS);
		uint64_t hi = ((uint64_t)brand_code >> BRAND_LO_BITS) |
			      rbit << KEYHI_RTYPE_SHIFT |
			      ch << KEYHI_CHANNEL_SHIFT;
		uint64_t in[2] = { lo, hi };
		out->bits[0] = lo;
		out->bits[1] = hi << VAL_KEYHI_SHIFT;
		out->hash = XXH3_64bits_withSecret(in, sizeof(in), ix->secret,
						   INDEX_SECRET_BYTES);
		return;
	}

	/* E-mail: fingerprint of (rtype, brand LE, address). */
	uint8_t buf[5 + RECIPIENT_EMAIL_MAX];
	size_t len = r->email_len <= RECIPIENT_EMAIL_MAX ? r->email_len
							 : RECIPIENT_EMAIL_MAX;
	buf[0] = (uint8_t)rbit;
	buf[1] = (uint8_t)brand_code;
	buf[2] = (uint8_t)(brand_code >> 8);
	buf[3] = (uint8_t)(brand_code >> 16);
	buf[4] = (uint8_t)(brand_code >> 24);
	memcpy(buf + 5, r->email, len);
	XXH128_hash_t fp = XXH3_128bits_withSecret(buf, 5 + len, ix->secret,
						   INDEX_SECRET_BYTES);
	uint64_t ch = channel == CHANNEL_EPOSTA ? CHANNEL_EPOSTA : 0;
	/* fastrange consumes the high bits of fp.high64; store its low 19,
	 * disjoint from them (the essay's 96-bit argument). */
	uint64_t hi = (fp.high64 & KEYHI_FP_MASK) | ch << KEYHI_CHANNEL_SHIFT;
	out->bits[0] = fp.low64;
	out->bits[1] = hi << VAL_KEYHI_SHIFT;
	out->hash = fp.high64;
}

/* A key index_key_make could have made: a channel, and nothing in the
 * probe index and cell bits. */
static bool key_ok(const struct index_key *key)
{
	return (key->bits[1] >> (VAL_KEYHI_SHIFT + KEYHI_CHANNEL_SHIFT)) != 0 &&
	       (key->bits[1] & ~VAL_KEYHI_MASK) == 0;
}

/* ---- lookups (any thread) ---- */

/* What one bucket says about a key: its val word (found), PROBE_ABSENT
 * (an empty slot, or at the home bucket a clear overflow cell, ends the
 * search) or PROBE_NEXT (go on). want is probe_want() for this bucket;
 * cell is the key's overflow cell at its home bucket, -1 elsewhere. */
#define PROBE_ABSENT 0
#define PROBE_NEXT 1 /* never a val word: source code 0 is not stored */

static uint64_t probe_bucket(const struct index_bucket *bk,
			     const struct index_key *key, uint64_t want,
			     int cell)
{
	for (int s = 0; s < BUCKET_SLOTS; s++) {
		/* Acquire: pairs with the release store of val in
		 * index_apply_writer, so the key word below is the one
		 * written before this val. */
		uint64_t v = atomic_load_explicit(&bk->slot[s].val,
						  memory_order_acquire);
		if (v == 0)
			return PROBE_ABSENT;
		if ((v & VAL_ID_MASK) != want)
			continue;
		/* Relaxed: ordered by the acquire above; key words never
		 * change once published. */
		uint64_t k = atomic_load_explicit(&bk->slot[s].key,
						  memory_order_relaxed);
		if (k == key->bits[0])
			return v;
	}
	if (cell >= 0) {
		/* Acquire: pairs with mark_overflow's release; cells are only
		 * ever set, so any value read is one the writer stored after
		 * every mark an old key needs (see the essay). */
		uint64_t v = atomic_load_explicit(
			&bk->slot[cell / CELLS_PER_SLOT].val,
			memory_order_acquire);
		if ((v & cell_bit((unsigned)cell)) == 0)
			return PROBE_ABSENT;
	}
	return PROBE_NEXT;
}

/* Probes key's sequence. Returns its val word, or 0 if absent; *reads
 * counts the buckets read. */
static uint64_t probe(const struct index *ix, const struct index_key *key,
		      uint64_t *reads)
{
	uint64_t mix = key_mix(key->bits[0], key->bits[1]);
	uint64_t step = probe_step(ix, mix), b = home_bucket(ix, key->hash);
	int cell = (int)overflow_cell(mix);

	/* The limit keeps an empty slot in the table and the sequence visits
	 * every bucket, so every probe ends; the bound only guards against a
	 * table that broke that. */
	for (uint64_t i = 0; i < ix->n_buckets; i++) {
		(*reads)++;
		uint64_t v = probe_bucket(&ix->buckets[b], key,
					  probe_want(key, i), i == 0 ? cell : -1);
		if (v != PROBE_NEXT)
			return v;
		b = next_bucket(ix, b, step);
	}
	return 0;
}

bool index_lookup(const struct index *ix, const struct index_key *key,
		  struct consent_value *out)
{
	uint64_t reads = 0;
	uint64_t v = probe(ix, key, &reads);
	if (v == 0)
		return false;
	decode_value(v, out);
	return true;
}

uint64_t index_probe_buckets(const struct index *ix,
			     const struct index_key *key)
{
	uint64_t reads = 0;
	probe(ix, key, &reads);
	return reads;
}

/*
 * Batches go in windows of BATCH_WINDOW keys and in rounds: round 0
 * prefetches every home bucket, then each round reads one bucket of every
 * key still unresolved, prefetching the next bucket of those that must go
 * on. Most misses end at the home bucket (its overflow cell is clear);
 * the rest and the displaced hits have their later lines in flight
 * together instead of one key after the other.
 */
void index_lookup_batch(const struct index *ix, const struct index_key *keys,
			size_t n, struct consent_value *out, bool *found)
{
	for (size_t base = 0; base < n; base += BATCH_WINDOW) {
		size_t m = n - base < BATCH_WINDOW ? n - base : BATCH_WINDOW;
		uint64_t b[BATCH_WINDOW], step[BATCH_WINDOW];
		int cell[BATCH_WINDOW];
		uint8_t todo[BATCH_WINDOW];
		size_t n_todo = m;
		for (size_t i = 0; i < m; i++) {
			const struct index_key *k = &keys[base + i];
			b[i] = home_bucket(ix, k->hash);
			__builtin_prefetch(&ix->buckets[b[i]], 0, 0);
			uint64_t mix = key_mix(k->bits[0], k->bits[1]);
			step[i] = probe_step(ix, mix);
			cell[i] = (int)overflow_cell(mix);
			todo[i] = (uint8_t)i;
			found[base + i] = false;
		}
		/* Round r reads every unresolved key's r-th bucket, so
		 * n_buckets rounds cover the table (the probe() bound). */
		for (uint64_t round = 0; n_todo > 0 && round < ix->n_buckets;
		     round++) {
			size_t left = 0;
			for (size_t t = 0; t < n_todo; t++) {
				size_t i = todo[t];
				const struct index_key *k = &keys[base + i];
				uint64_t v = probe_bucket(
					&ix->buckets[b[i]], k,
					probe_want(k, round),
					round == 0 ? cell[i] : -1);
				if (v == PROBE_NEXT) {
					b[i] = next_bucket(ix, b[i], step[i]);
					__builtin_prefetch(&ix->buckets[b[i]], 0, 0);
					todo[left++] = (uint8_t)i;
				} else if (v != PROBE_ABSENT) {
					found[base + i] = true;
					decode_value(v, &out[base + i]);
				}
			}
			n_todo = left;
		}
	}
}

void index_prefetch(const struct index *ix, const struct index_key *key)
{
	/* Write intent: the builder's next step is a store into the line. */
	__builtin_prefetch(&ix->buckets[home_bucket(ix, key->hash)], 1, 0);
}

/* ---- the writer ---- */

/* The order rule's rank (see the essay): date, then RET over ONAY, then
 * source code. Everything but the key bits, reordered. The same rule as
 * consent_value_newer (core/decision.h), which the history's as-of
 * answers use; tests/history_test.c compares the two. */
static uint64_t rank(uint64_t v)
{
	return ((v >> VAL_DATE_SHIFT) & VAL_DATE_MASK) << 6 |
	       (v & VAL_RET) << 5 | ((v >> VAL_SOURCE_SHIFT) & VAL_SOURCE_MASK);
}

/* The date field holds exactly the range core/decision.h defines. */
static_assert(VAL_DATE_MASK == CONSENT_DATE_MAX - CONSENT_DATE_MIN,
	      "the index's date bits are the consent date range");

bool index_value_fits(const struct consent_value *value)
{
	return (value->status == STATUS_ONAY || value->status == STATUS_RET) &&
	       value->consent_date >= CONSENT_DATE_MIN &&
	       value->consent_date <= CONSENT_DATE_MAX;
}

/* Sets the overflow cell of a full home bucket (writer only). */
static void mark_overflow(struct index_bucket *home, unsigned cell)
{
	_Atomic uint64_t *w = &home->slot[cell / CELLS_PER_SLOT].val;
	/* Relaxed: only this thread writes slots. */
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	if ((v & cell_bit(cell)) == 0)
		/* Release: pairs with probe_bucket's acquire of the cell's
		 * word; stored before the displaced entry (see the essay). */
		atomic_store_explicit(w, v | cell_bit(cell),
				      memory_order_release);
}

int index_apply_writer(struct index *ix, const struct index_key *key,
		       const struct consent_value *value)
{
	if (!index_value_fits(value) || !key_ok(key))
		return -EINVAL;

	uint64_t nv = key->bits[1] |
		      (uint64_t)(value->consent_date - INDEX_EPOCH) << VAL_DATE_SHIFT |
		      source_code(value->source) << VAL_SOURCE_SHIFT |
		      (value->status == STATUS_RET ? VAL_RET : 0);
	uint64_t mix = key_mix(key->bits[0], key->bits[1]);
	uint64_t step = probe_step(ix, mix);
	uint64_t home = home_bucket(ix, key->hash), b = home;

	/* The key, if present, lies before the first empty slot of its
	 * sequence; the writer does not need the overflow cell to know. */
	for (uint64_t i = 0; i < ix->n_buckets; i++) {
		struct index_bucket *bk = &ix->buckets[b];
		uint64_t want = probe_want(key, i);
		for (int s = 0; s < BUCKET_SLOTS; s++) {
			/* Relaxed: only this thread writes slots. */
			uint64_t v = atomic_load_explicit(&bk->slot[s].val,
							  memory_order_relaxed);
			if (v == 0) {
				uint64_t nr = atomic_load_explicit(
					&ix->n_records, memory_order_relaxed);
				if (nr >= ix->limit)
					return -ENOSPC;
				/* Displaced: the home's cell first, so that
				 * whoever can see the entry can see it. */
				if (i > 0)
					mark_overflow(&ix->buckets[home],
						      overflow_cell(mix));
				/* Relaxed: published by the release below. */
				atomic_store_explicit(&bk->slot[s].key,
						      key->bits[0],
						      memory_order_relaxed);
				/* Release: pairs with the acquire load of val
				 * in probe_bucket(); makes the key word visible
				 * with it. */
				atomic_store_explicit(&bk->slot[s].val,
						      want | (nv & ~VAL_ID_MASK),
						      memory_order_release);
				/* Release: pairs with index_info's acquire. */
				atomic_store_explicit(&ix->n_records, nr + 1,
						      memory_order_release);
				return INDEX_INSERTED;
			}
			if ((v & VAL_ID_MASK) != want ||
			    atomic_load_explicit(&bk->slot[s].key,
						 memory_order_relaxed) !=
				    key->bits[0])
				continue;
			if (rank(nv) <= rank(v))
				return INDEX_SKIPPED;
			/* Release: pairs with probe_bucket()'s acquire; one
			 * word, so readers see the old value or this one
			 * whole, with the probe index and cells kept. */
			atomic_store_explicit(&bk->slot[s].val,
					      nv | (v & (VAL_PROBE_MASK |
							 VAL_CELL_MASK)),
					      memory_order_release);
			return INDEX_UPDATED;
		}
		b = next_bucket(ix, b, step);
	}
	return -ENOSPC; /* unreachable while the limit holds */
}

int index_foreach(const struct index *ix, index_visit_fn fn, void *arg)
{
	for (uint64_t b = 0; b < ix->n_buckets; b++) {
		const struct index_bucket *bk = &ix->buckets[b];
		for (int s = 0; s < BUCKET_SLOTS; s++) {
			/* Acquire: pairs with the release store of val in
			 * index_apply_writer, as in probe_bucket, so the key
			 * word below is the one written before this val
			 * (foreach may run beside the writer). */
			uint64_t v = atomic_load_explicit(&bk->slot[s].val,
							  memory_order_acquire);
			if (v == 0)
				break;
			uint64_t k = atomic_load_explicit(&bk->slot[s].key,
							  memory_order_relaxed);
			uint64_t hi = v >> VAL_KEYHI_SHIFT;
			struct index_entry e;
			memset(&e, 0, sizeof(e));
			e.channel = (uint8_t)(hi >> KEYHI_CHANNEL_SHIFT);
			e.is_email = e.channel == CHANNEL_EPOSTA;
			if (!e.is_email) {
				e.phone = k & PHONE_MASK;
				e.brand_code = (uint32_t)(k >> PHONE_BITS) |
					(uint32_t)((hi & KEYHI_BRAND_MASK)
						   << BRAND_LO_BITS);
				e.rtype = ((hi >> KEYHI_RTYPE_SHIFT) & 1)
						  ? RTYPE_TACIR : RTYPE_BIREYSEL;
			}
			decode_value(v, &e.value);
			int rc = fn(&e, arg);
			if (rc != 0)
				return rc;
		}
	}
	return 0;
}

/* ---- the file ---- */

static uint64_t header_hash(const struct index_file_header *h)
{
	return XXH3_64bits(h, offsetof(struct index_file_header, header_xxh3));
}

/*
 * Checks one chunk of the bucket array as it is loaded: every slot is
 * either empty (both words 0) or holds a valid source code and channel,
 * no occupied slot follows an empty one in its bucket (probes stop at
 * the first empty slot), and only full buckets carry overflow cells.
 * Counts occupied slots into *occupied. Returns the index of the first
 * bad bucket in the chunk, or -1. check_marks does the cross-bucket part.
 */
static int64_t verify_chunk(const struct index_bucket *bk, size_t n,
			   uint64_t *occupied)
{
	uint64_t count = 0;
	for (size_t i = 0; i < n; i++) {
		bool empty_seen = false;
		uint64_t cells = 0;
		for (int s = 0; s < BUCKET_SLOTS; s++) {
			/* Relaxed: the index is not shared during open. */
			uint64_t v = atomic_load_explicit(&bk[i].slot[s].val,
							  memory_order_relaxed);
			uint64_t k = atomic_load_explicit(&bk[i].slot[s].key,
							  memory_order_relaxed);
			if (v == 0) {
				if (k != 0)
					return (int64_t)i;
				empty_seen = true;
				continue;
			}
			uint64_t code = (v >> VAL_SOURCE_SHIFT) & VAL_SOURCE_MASK;
			uint64_t ch = v >> (VAL_KEYHI_SHIFT + KEYHI_CHANNEL_SHIFT);
			if (empty_seen || code == 0 ||
			    code > SOURCE_CODE_UNSPECIFIED || ch == 0)
				return (int64_t)i;
			cells |= v & VAL_CELL_MASK;
			count++;
		}
		if (empty_seen && cells != 0)
			return (int64_t)i;
	}
	*occupied += count;
	return -1;
}

static bool bucket_full(const struct index *ix, uint64_t b)
{
	/* Relaxed: the index is not shared during open. */
	return atomic_load_explicit(&ix->buckets[b].slot[BUCKET_SLOTS - 1].val,
				    memory_order_relaxed) != 0;
}

/*
 * The overflow cells against the entries (after verify_chunk passed on
 * every chunk). An entry with probe index f (1..6) sits f steps along its
 * sequence: the buckets it passed, f..1 steps back, must be full (a probe
 * goes on only past a full bucket) and its home, f steps back, must carry
 * its cell, or a lookup would not reach it: that is corruption, refused.
 * An entry at probe field 7 sits 7 or more steps on, its home somewhere
 * in the unbroken run of full buckets 7, 8, ... steps back: one of them
 * must carry the cell (the true home, where the writer set it), or it is
 * set in every one of them (the true home is among them; an extra cell
 * only costs a miss a read). The step and cell come from the stored key
 * bits and the home from the probe index, so nothing here needs a
 * recipient. Returns the first bad bucket, or -1.
 */
static bool check_entry(struct index *ix, uint64_t b, uint64_t k, uint64_t v)
{
	uint64_t f = (v & VAL_PROBE_MASK) >> VAL_PROBE_SHIFT;
	uint64_t mix = key_mix(k, v & VAL_KEYHI_MASK);
	uint64_t step = probe_step(ix, mix), q = b;
	unsigned cell = overflow_cell(mix);

	for (uint64_t j = 0; j < f; j++) {
		q = prev_bucket(ix, q, step);
		if (!bucket_full(ix, q))
			return false;
	}
	/* Relaxed: the index is not shared during open. */
	_Atomic uint64_t *w = &ix->buckets[q].slot[cell / CELLS_PER_SLOT].val;
	if (f < PROBE_CAP)
		return (atomic_load_explicit(w, memory_order_relaxed) &
			cell_bit(cell)) != 0;
	/* The writer set the cell in the true home, which lies in the run:
	 * a file it wrote has it there already, and nothing is written. A
	 * store would copy the page of a MAP_PRIVATE mapping (MMAP), and
	 * the run's other buckets, with the ~0.2 % of entries at probe 7,
	 * touch most pages of a large table. */
	uint64_t r = q;
	for (uint64_t j = 0; j < ix->n_buckets && bucket_full(ix, r); j++) {
		w = &ix->buckets[r].slot[cell / CELLS_PER_SLOT].val;
		if (atomic_load_explicit(w, memory_order_relaxed) &
		    cell_bit(cell))
			return true;
		r = prev_bucket(ix, r, step);
	}
	/* None has it: set it in every one (the home is among them). */
	for (uint64_t j = 0; j < ix->n_buckets && bucket_full(ix, q); j++) {
		w = &ix->buckets[q].slot[cell / CELLS_PER_SLOT].val;
		uint64_t c = atomic_load_explicit(w, memory_order_relaxed);
		if ((c & cell_bit(cell)) == 0)
			atomic_store_explicit(w, c | cell_bit(cell),
					      memory_order_relaxed);
		q = prev_bucket(ix, q, step);
	}
	return true;
}

/* The displaced entries go through check_entry in windows, each one's
 * previous bucket (for most, the home) prefetched first: the checks are
 * random reads, and this overlaps them. */
#define MARK_WINDOW 64

static int64_t check_marks(struct index *ix)
{
	struct { uint64_t b, k, v; } w[MARK_WINDOW];
	size_t n = 0;

	for (uint64_t b = 0; b <= ix->n_buckets; b++) {
		if (n > MARK_WINDOW - BUCKET_SLOTS || b == ix->n_buckets) {
			for (size_t i = 0; i < n; i++)
				if (!check_entry(ix, w[i].b, w[i].k, w[i].v))
					return (int64_t)w[i].b;
			n = 0;
		}
		if (b == ix->n_buckets)
			break;
		for (int s = 0; s < BUCKET_SLOTS; s++) {
			/* Relaxed: the index is not shared during open. */
			uint64_t v = atomic_load_explicit(
				&ix->buckets[b].slot[s].val,
				memory_order_relaxed);
			if (v == 0)
				break;
			if ((v & VAL_PROBE_MASK) == 0)
				continue;
			uint64_t k = atomic_load_explicit(
				&ix->buckets[b].slot[s].key,
				memory_order_relaxed);
			uint64_t step = probe_step(
				ix, key_mix(k, v & VAL_KEYHI_MASK));
			__builtin_prefetch(&ix->buckets[prev_bucket(ix, b, step)],
					   0, 0);
			w[n].b = b;
			w[n].k = k;
			w[n].v = v;
			n++;
		}
	}
	return -1;
}

static int read_full(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t r = pread(fd, p, len, off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EPROTO; /* the file shrank under us */
		p += r;
		len -= (size_t)r;
		off += r;
	}
	return 0;
}

static int check_header(const struct index_file_header *h, uint64_t file_bytes,
			const char *path, char *err, size_t err_cap)
{
	if (memcmp(h->magic, INDEX_MAGIC, sizeof(h->magic)) != 0)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: bad magic: not a consentd index file", path);
	if (h->format_version == 1)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: format version 1 (linear probing, no overflow "
			    "cells), this build reads %d: rebuild the index from "
			    "its snapshot (consentctl build)", path,
			    INDEX_FORMAT_VERSION);
	if (h->format_version != INDEX_FORMAT_VERSION)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: format version %" PRIu32 ", this build reads %d",
			    path, h->format_version, INDEX_FORMAT_VERSION);
	if (header_hash(h) != h->header_xxh3)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header checksum mismatch (header corrupt)", path);
	for (size_t i = 0; i < sizeof(h->padding); i++)
		if (h->padding[i] != 0)
			return errmsg_fail(err, err_cap, -EPROTO,
				    "%s: header padding byte %zu is not zero",
				    path, offsetof(struct index_file_header,
						   padding) + i);
	if (h->header_bytes != INDEX_HEADER_BYTES ||
	    h->bucket_bytes != BUCKET_BYTES || h->reserved0 != 0)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header says %" PRIu32 "-byte header, %" PRIu32
			    "-byte buckets; this build uses %d and %d",
			    path, h->header_bytes, h->bucket_bytes,
			    INDEX_HEADER_BYTES, BUCKET_BYTES);
	uint64_t body = file_bytes - INDEX_HEADER_BYTES;
	if (h->n_buckets == 0 || h->n_buckets > body / BUCKET_BYTES ||
	    h->n_buckets * BUCKET_BYTES != body)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: file is %" PRIu64 " bytes but the header says %"
			    PRIu64 " buckets of %d bytes after the %d-byte "
			    "header: truncated or extended", path, file_bytes,
			    h->n_buckets, BUCKET_BYTES, INDEX_HEADER_BYTES);
	if (!prime(h->n_buckets))
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header says %" PRIu64 " buckets, not a prime "
			    "(probe sequences need one)", path, h->n_buckets);
	if (h->capacity != limit_for(h->n_buckets) ||
	    h->n_records > h->capacity)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header says %" PRIu64 " records, capacity %"
			    PRIu64 ", but %" PRIu64 " buckets hold %" PRIu64,
			    path, h->n_records, h->capacity, h->n_buckets,
			    limit_for(h->n_buckets));
	return 0;
}

/* MAP_PRIVATE: the writer's updates stay in this process (copy on
 * write, a page at a time). No MAP_POPULATE: on a private writable
 * mapping it faults every page in for writing, which copies the whole
 * file into anonymous memory (the two copies MMAP is there to avoid);
 * validation reads it through, read faults that map the page cache. */
static int map_buckets(struct index *ix, int fd, size_t file_bytes)
{
	uint8_t *m = mmap(NULL, file_bytes, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE, fd, 0);

	if (m == MAP_FAILED)
		return -errno;
	ix->map = m;
	ix->map_bytes = file_bytes;
	ix->huge_pages = false;
	ix->mapped = true;
	ix->buckets = (struct index_bucket *)(m + INDEX_HEADER_BYTES);
	return 0;
}

/* ---- the memory rule ---- */

enum index_load_mode index_load_choose(uint64_t table_bytes,
				       uint64_t mem_available)
{
	/* Growth in ANON holds the served table and one 1.5 times its size,
	 * both anonymous (and a snapshot swap the served table and the
	 * built one): 2.5 tables, with a reserve for everything else. */
	if (table_bytes > UINT64_MAX / 8)
		return INDEX_LOAD_MMAP;
	uint64_t need = table_bytes * 5 / 2;
	if (mem_available < INDEX_LOAD_RESERVE_BYTES ||
	    need > mem_available - INDEX_LOAD_RESERVE_BYTES)
		return INDEX_LOAD_MMAP;
	return INDEX_LOAD_ANON;
}

int index_mem_available(uint64_t *out)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	int rc = -ENOENT;

	if (f == NULL)
		return -errno;
	while (fgets(line, sizeof(line), f) != NULL) {
		unsigned long long kb;
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
			*out = (uint64_t)kb << 10;
			rc = 0;
			break;
		}
	}
	fclose(f);
	return rc;
}

/*
 * The one chunk loader of both modes: chunk by chunk, read the bucket
 * array into place (read_in: anonymous memory) or take it as mapped, then
 * hash and check the chunk while it is still in cache. Afterwards the
 * checksum, every entry and the record count agree with the header h, or
 * it fails naming what does not.
 */
static int load_buckets(struct index *ix, int fd, size_t bytes, bool read_in,
			const struct index_file_header *h, const char *path,
			index_progress_fn progress, void *arg, char *err,
			size_t err_cap)
{
	size_t step = bytes >= INDEX_PROGRESS_MIN_BYTES && progress ? bytes / 8
								     : 0;
	size_t next_report = step;
	XXH3_state_t *hs = XXH3_createState();
	uint64_t occupied = 0, sum;
	int64_t bad = -1;
	size_t bad_at = 0;

	if (hs == NULL)
		return errmsg_fail(err, err_cap, -ENOMEM, "%s: out of memory", path);
	XXH3_64bits_reset(hs);
	for (size_t off = 0; off < bytes && bad < 0; off += IO_CHUNK_BYTES) {
		size_t len = bytes - off < IO_CHUNK_BYTES ? bytes - off
							  : IO_CHUNK_BYTES;
		uint8_t *p = (uint8_t *)ix->buckets + off;

		if (read_in) {
			int rc = read_full(fd, p, len,
					   INDEX_HEADER_BYTES + (off_t)off);
			if (rc < 0) {
				XXH3_freeState(hs);
				return errmsg_fail(err, err_cap, rc, "%s: read: %s",
					    path, strerror(-rc));
			}
		}
		XXH3_64bits_update(hs, p, len);
		bad = verify_chunk((const struct index_bucket *)p,
				  len / BUCKET_BYTES, &occupied);
		bad_at = off / BUCKET_BYTES;
		if (step && off + len >= next_report && bad < 0) {
			progress(path, off + len, bytes, arg);
			next_report += step;
		}
	}
	sum = XXH3_64bits_digest(hs);
	XXH3_freeState(hs);

	/* The checksum is the stronger statement; report it first. */
	if (bad < 0 && sum != h->buckets_xxh3)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: bucket array checksum mismatch (data corrupt)",
			    path);
	if (bad >= 0)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: bucket %zu holds an invalid entry%s", path,
			    bad_at + (size_t)bad,
			    sum == h->buckets_xxh3 ? "" : " (checksum mismatch)");
	if (occupied != h->n_records)
		return errmsg_fail(err, err_cap, -EPROTO,
			    "%s: header says %" PRIu64 " records but %" PRIu64
			    " slots are occupied", path, h->n_records, occupied);
	return 0;
}

int index_open(const char *path, enum index_load_mode mode, struct index **out,
	       char *err, size_t err_cap)
{
	return index_open_progress(path, mode, NULL, NULL, out, err, err_cap);
}

int index_open_progress(const char *path, enum index_load_mode mode,
			index_progress_fn progress, void *arg,
			struct index **out, char *err, size_t err_cap)
{
	struct index_file_header *h = NULL;
	struct index *ix = NULL;
	struct stat st;
	int rc;

	if (err != NULL && err_cap > 0)
		err[0] = '\0';
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		return errmsg_fail(err, err_cap, rc, "%s: %s", path, strerror(-rc));
	}
	if (fstat(fd, &st) < 0) {
		rc = errmsg_fail(err, err_cap, -errno, "%s: fstat: %s", path,
			  strerror(errno));
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size < INDEX_HEADER_BYTES) {
		rc = errmsg_fail(err, err_cap, -EPROTO,
			  "%s: %lld bytes, shorter than the %d-byte header "
			  "(truncated or not an index)", path,
			  (long long)st.st_size, INDEX_HEADER_BYTES);
		goto out_close;
	}
	h = aligned_alloc(64, sizeof(*h));
	ix = calloc(1, sizeof(*ix));
	if (h == NULL || ix == NULL) {
		rc = errmsg_fail(err, err_cap, -ENOMEM, "%s: out of memory", path);
		goto out_free;
	}
	rc = read_full(fd, h, sizeof(*h), 0);
	if (rc < 0) {
		rc = errmsg_fail(err, err_cap, rc, "%s: reading the header: %s", path,
			  strerror(-rc));
		goto out_free;
	}
	rc = check_header(h, (uint64_t)st.st_size, path, err, err_cap);
	if (rc < 0)
		goto out_free;
	if (h->n_buckets > SIZE_MAX / BUCKET_BYTES) {
		rc = errmsg_fail(err, err_cap, -ENOMEM, "%s: %" PRIu64 " buckets do "
			  "not fit in memory", path, h->n_buckets);
		goto out_free;
	}

	size_t bytes = h->n_buckets * BUCKET_BYTES;
	if (mode == INDEX_LOAD_AUTO) {
		uint64_t avail = 0;
		mode = index_mem_available(&avail) == 0
			       ? index_load_choose(bytes, avail)
			       : INDEX_LOAD_MMAP;
	}
	rc = mode == INDEX_LOAD_MMAP ? map_buckets(ix, fd, (size_t)st.st_size)
				     : anon_alloc(ix, bytes);
	if (rc < 0) {
		rc = mode == INDEX_LOAD_MMAP
			? errmsg_fail(err, err_cap, rc, "%s: mmap: %s", path,
			       strerror(-rc))
			: errmsg_fail(err, err_cap, rc, "%s: %" PRIu64 " bytes of "
			       "memory: %s", path, (uint64_t)bytes,
			       strerror(-rc));
		goto out_free;
	}
	rc = load_buckets(ix, fd, bytes, mode != INDEX_LOAD_MMAP, h, path,
			  progress, arg, err, err_cap);
	if (rc < 0)
		goto out_free;
	ix->n_buckets = h->n_buckets;
	int64_t bad = check_marks(ix);
	if (bad >= 0) {
		rc = errmsg_fail(err, err_cap, -EPROTO, "%s: bucket %" PRId64 " holds "
			  "an entry its home's overflow cell does not lead to "
			  "(invalid entry)", path, bad);
		goto out_free;
	}

	ix->limit = h->capacity;
	atomic_init(&ix->created_at, h->created_at);
	memcpy(ix->secret, h->secret, INDEX_SECRET_BYTES);
	atomic_init(&ix->n_records, h->n_records);
	atomic_init(&ix->generation, h->generation);
	atomic_init(&ix->watermark, h->watermark);
	atomic_init(&ix->data_as_of, h->data_as_of);
	free(h);
	close(fd);
	*out = ix;
	return 0;

out_free:
	free(h);
	index_destroy(ix);
out_close:
	close(fd);
	return rc;
}

/* The header of ix's file, its array's checksum given. */
static void header_fill(const struct index *ix, uint64_t buckets_xxh3,
			struct index_file_header *h)
{
	struct index_info info;
	index_info(ix, &info);
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, INDEX_MAGIC, sizeof(h->magic));
	h->format_version = INDEX_FORMAT_VERSION;
	h->header_bytes = INDEX_HEADER_BYTES;
	h->bucket_bytes = BUCKET_BYTES;
	h->n_buckets = ix->n_buckets;
	h->n_records = info.n_records;
	h->capacity = ix->limit;
	h->generation = info.generation;
	h->watermark = info.watermark;
	h->created_at = info.created_at;
	h->data_as_of = info.data_as_of;
	memcpy(h->secret, ix->secret, INDEX_SECRET_BYTES);
	h->buckets_xxh3 = buckets_xxh3;
	h->header_xxh3 = header_hash(h);
}

int index_write(const struct index *ix, const char *path)
{
	char tmp[4096];
	int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return -ENAMETOOLONG;

	struct index_file_header *h = aligned_alloc(64, sizeof(*h));
	XXH3_state_t *hs = XXH3_createState();
	if (h == NULL || hs == NULL) {
		free(h);
		XXH3_freeState(hs);
		return -ENOMEM;
	}
	int rc;
	unlink(tmp); /* left by a crashed process that had our pid */
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out_free;
	}

	/* The bucket array first, hashed as it goes out, then the header
	 * that carries its checksum. Only the writer thread (or the builder
	 * before publishing) calls this, so the array holds still. */
	XXH3_64bits_reset(hs);
	size_t bytes = ix->n_buckets * BUCKET_BYTES;
	for (size_t off = 0; off < bytes; off += IO_CHUNK_BYTES) {
		size_t len = bytes - off < IO_CHUNK_BYTES ? bytes - off
							  : IO_CHUNK_BYTES;
		const uint8_t *p = (const uint8_t *)ix->buckets + off;
		XXH3_64bits_update(hs, p, len);
		rc = fsutil_pwrite_all(fd, p, len, INDEX_HEADER_BYTES + off);
		if (rc < 0)
			goto out_unlink;
	}

	header_fill(ix, XXH3_64bits_digest(hs), h);
	rc = fsutil_pwrite_all(fd, h, sizeof(*h), 0);
	if (rc < 0)
		goto out_unlink;

	/* A failed fsync is returned, never retried (DESIGN §5.1): the
	 * kernel may have dropped the dirty pages already. */
	if (fsync(fd) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	/* Clean now: nobody reads a generation's file until the next start
	 * (the served table is in memory or in a working file), so its
	 * pages leave the page cache rather than crowd the served ones (a
	 * hint; README "Memory"). */
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	rc = close(fd) < 0 ? -errno : 0;
	fd = -1;
	if (rc < 0)
		goto out_unlink;
	if (rename(tmp, path) < 0) {
		rc = -errno;
		goto out_unlink;
	}
	rc = fsutil_fsync_parent(path);
	goto out_free;

out_unlink:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
out_free:
	free(h);
	XXH3_freeState(hs);
	return rc;
}

/* ---- a table filled in its file ---- */

/* The release unit: writeback is started and pages dropped in steps of
 * this many bytes, so that the calls stay few. */
#define RELEASE_STEP_BYTES (8u << 20)

/* An empty table of n_buckets in a new file at path (secret NULL:
 * random); see index_create_file. */
static int file_table(uint64_t n_buckets, const uint8_t *secret,
		      const char *path, struct index **out)
{
	int rc;
	if (n_buckets > (SIZE_MAX - INDEX_HEADER_BYTES) / BUCKET_BYTES)
		return -ENOMEM;
	size_t file_bytes = INDEX_HEADER_BYTES + n_buckets * BUCKET_BYTES;
	struct index *ix = calloc(1, sizeof(*ix));
	if (ix == NULL)
		return -ENOMEM;
	ix->file_path = strdup(path);
	if (ix->file_path == NULL) {
		free(ix);
		return -ENOMEM;
	}
	if (secret != NULL) {
		memcpy(ix->secret, secret, INDEX_SECRET_BYTES);
	} else if (getrandom(ix->secret, INDEX_SECRET_BYTES, 0) !=
		   INDEX_SECRET_BYTES) {
		rc = -EIO;
		goto out_free;
	}
	ix->file_fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (ix->file_fd < 0) {
		rc = -errno;
		goto out_free;
	}
	/* Blocks allocated now (zero, unwritten extents: fast): a store
	 * into a hole of a full disk would be a SIGBUS, not an error. */
	rc = -posix_fallocate(ix->file_fd, 0, (off_t)file_bytes);
	if (rc < 0)
		goto out_unlink;
	void *m = mmap(NULL, file_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       ix->file_fd, 0);
	if (m == MAP_FAILED) {
		rc = -errno;
		goto out_unlink;
	}
	ix->map = m;
	ix->map_bytes = file_bytes;
	ix->mapped = true;
	ix->buckets = (struct index_bucket *)((uint8_t *)m + INDEX_HEADER_BYTES);
	/* The file reads as zeros: every slot is empty. */
	index_init_empty(ix, n_buckets);
	*out = ix;
	return 0;

out_unlink:
	unlink(path);
	close(ix->file_fd);
out_free:
	free(ix->file_path);
	free(ix);
	return rc;
}

int index_create_file(uint64_t capacity, const struct index *secret_of,
		      const char *path, struct index **out)
{
	uint64_t n_buckets;
	int rc = sizes_for(capacity, &n_buckets);
	if (rc < 0)
		return rc;
	return file_table(n_buckets, secret_of ? secret_of->secret : NULL,
			  path, out);
}

int index_copy_file(const struct index *src, const char *path,
		    struct index **out)
{
	struct index *ix;
	int rc = file_table(src->n_buckets, src->secret, path, &ix);
	if (rc < 0)
		return rc;
	/* Written through the file, not the mapping: the copy's pages go
	 * to the page cache (and, with a release step's writeback, to the
	 * disk) without entering this process's resident set. */
	size_t bytes = src->n_buckets * BUCKET_BYTES;
	for (size_t off = 0; off < bytes && rc == 0; off += IO_CHUNK_BYTES) {
		size_t len = bytes - off < IO_CHUNK_BYTES ? bytes - off
							  : IO_CHUNK_BYTES;
		rc = fsutil_pwrite_all(ix->file_fd,
				       (const uint8_t *)src->buckets + off, len,
				       INDEX_HEADER_BYTES + off);
		if (rc == 0 && (off + len) % RELEASE_STEP_BYTES == 0)
			(void)sync_file_range(ix->file_fd,
					      (off_t)(INDEX_HEADER_BYTES + off +
						      len - RELEASE_STEP_BYTES),
					      RELEASE_STEP_BYTES,
					      SYNC_FILE_RANGE_WRITE);
	}
	if (rc < 0) {
		unlink(path);
		index_destroy(ix);
		return rc;
	}
	struct index_info info;
	index_info(src, &info);
	/* Not shared yet: plain initial values. */
	atomic_init(&ix->n_records, info.n_records);
	atomic_init(&ix->generation, info.generation);
	atomic_init(&ix->watermark, info.watermark);
	atomic_init(&ix->created_at, info.created_at);
	atomic_init(&ix->data_as_of, info.data_as_of);
	*out = ix;
	return 0;
}

const char *index_file_path(const struct index *ix)
{
	return ix->file_path;
}

int index_file_sync(struct index *ix)
{
	if (ix->file_path == NULL)
		return 0;
	return fdatasync(ix->file_fd) < 0 ? -errno : 0;
}

void index_file_release(struct index *ix, uint64_t bucket)
{
	if (ix->file_path == NULL)
		return;
	if (bucket > ix->n_buckets)
		bucket = ix->n_buckets;
	/* Whole release steps of the file past the header page, from where
	 * the last call stopped. */
	uint64_t upto = INDEX_HEADER_BYTES + bucket * BUCKET_BYTES;
	upto -= upto % RELEASE_STEP_BYTES;
	uint64_t from = ix->released;
	if (from == 0)
		from = INDEX_HEADER_BYTES;
	if (upto <= from)
		return;
	/* Start writeback of the range (the data reaches the disk before
	 * the kernel needs the memory), then drop it from this mapping:
	 * its dirty state stays in the page cache, and a later store or
	 * load (a displaced entry, a reader) faults the page back in. Both
	 * are hints: a failure costs memory, never data. */
	(void)sync_file_range(ix->file_fd, (off_t)from, (off_t)(upto - from),
			      SYNC_FILE_RANGE_WRITE);
	(void)madvise((uint8_t *)ix->map + from, upto - from, MADV_DONTNEED);
	ix->released = upto;
}

/* A put + get loop over the C core, for instruction counts (callgrind):
 * what one put and one get of a 64-byte message cost in one process.
 * Run by benchmarks/callgrind_counters.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastq.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 0;
    fq_create_opts o = {0};
    o.capacity = 1 << 20;
    o.mode = 0600;
    fq_queue *q;
    char err[256];
    if (fq_create(NULL, &o, &q, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char buf[64];
    memset(buf, 7, sizeof buf);
    for (long i = -1; i < n; i++) { /* one more: attaching is not in the difference */
        fq_claim c;
        const void *d;
        uint64_t l;
        if (fq_put(q, buf, sizeof buf) || fq_get_begin(q, 1, ~0ull, &c) ||
            !fq_claim_next(q, &c, &d, &l) || l != sizeof buf)
            return 2;
        fq_get_end(q, &c);
    }
    fq_close(q);
    return 0;
}

/* Tokenizer benchmark: encode a corpus (a JSON array of documents, from make_corpus.py)
 * with dsr1's tokenizer, one call per document as a server would. One warm-up pass, then
 * REPS timed passes; prints the best pass in MB/s, and with --threads N also the
 * aggregate rate of N threads sharing one tokenizer. --ids-out writes the ids as JSON so
 * run_bench.sh can check they equal the reference's. */
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

typedef struct {
    const dsr1_tokenizer *tok;
    json_t *docs;
    size_t first, step; /* this thread encodes docs first, first + step, ... */
    size_t ntokens;
    int failed;
} job;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *run_job(void *arg)
{
    job *j = arg;
    j->ntokens = 0;
    for (size_t i = j->first; i < json_array_size(j->docs); i += j->step) {
        json_t *d = json_array_get(j->docs, i);
        int32_t *ids;
        size_t n;
        if (dsr1_tokenizer_encode(j->tok, json_string_value(d), json_string_length(d), 0, &ids,
                                  &n)) {
            fprintf(stderr, "bench: document %zu: %s\n", i, dsr1_errmsg());
            j->failed = 1;
            return NULL;
        }
        j->ntokens += n;
        free(ids);
    }
    return NULL;
}

/* Best wall time of reps passes over all documents with nthreads threads. */
static double timed(const dsr1_tokenizer *tok, json_t *docs, int nthreads, int reps,
                    size_t *ntokens)
{
    double best = 1e30;
    job jobs[64];
    pthread_t th[64];
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int i = 0; i < nthreads; i++) {
            jobs[i] = (job){tok, docs, (size_t)i, (size_t)nthreads, 0, 0};
            pthread_create(&th[i], NULL, run_job, &jobs[i]);
        }
        *ntokens = 0;
        for (int i = 0; i < nthreads; i++) {
            pthread_join(th[i], NULL);
            if (jobs[i].failed) exit(1);
            *ntokens += jobs[i].ntokens;
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static int write_ids(const dsr1_tokenizer *tok, json_t *docs, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    fputc('[', f);
    for (size_t i = 0; i < json_array_size(docs); i++) {
        json_t *d = json_array_get(docs, i);
        int32_t *ids;
        size_t n;
        if (dsr1_tokenizer_encode(tok, json_string_value(d), json_string_length(d), 0, &ids, &n))
            return 1;
        fputs(i ? ",[" : "[", f);
        for (size_t k = 0; k < n; k++) fprintf(f, k ? ",%d" : "%d", ids[k]);
        fputc(']', f);
        free(ids);
    }
    fputs("]\n", f);
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"reps", required_argument, 0, 'r'},
                                         {"threads", required_argument, 0, 't'},
                                         {"ids-out", required_argument, 0, 'o'},
                                         {0, 0, 0, 0}};
    int reps = 3, threads = 0, c;
    const char *ids_out = NULL;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'r')
            reps = atoi(optarg);
        else if (c == 't')
            threads = atoi(optarg);
        else if (c == 'o')
            ids_out = optarg;
        else
            return 2;
    }
    if (argc - optind != 2 || reps < 1 || threads < 0 || threads > 64) {
        fprintf(stderr, "usage: bench_tokenizer [--reps N] [--threads N] [--ids-out FILE] "
                        "MODEL_DIR CORPUS.json\n");
        return 2;
    }
    dsr1_tokenizer *tok;
    double t0 = now();
    if (dsr1_tokenizer_load(argv[optind], &tok)) {
        fprintf(stderr, "bench: %s\n", dsr1_errmsg());
        return 1;
    }
    double load_s = now() - t0;
    json_error_t err;
    json_t *docs = json_load_file(argv[optind + 1], JSON_ALLOW_NUL, &err);
    if (!json_is_array(docs)) {
        fprintf(stderr, "bench: %s: %s\n", argv[optind + 1], err.text);
        return 1;
    }
    size_t bytes = 0, ntok;
    for (size_t i = 0; i < json_array_size(docs); i++)
        bytes += json_string_length(json_array_get(docs, i));
    timed(tok, docs, 1, 1, &ntok); /* warm-up */
    double dt = timed(tok, docs, 1, reps, &ntok);
    printf("dsr1   %.2f MB, %zu tokens, best of %d: %.3f s = %.2f MB/s (1 thread; load %.2f s)\n",
           bytes / 1e6, ntok, reps, dt, bytes / 1e6 / dt, load_s);
    if (threads > 1) {
        dt = timed(tok, docs, threads, reps, &ntok);
        printf("dsr1   %d threads: %.3f s = %.2f MB/s\n", threads, dt, bytes / 1e6 / dt);
    }
    int rc = ids_out ? write_ids(tok, docs, ids_out) : 0;
    json_decref(docs);
    dsr1_tokenizer_free(tok);
    return rc;
}

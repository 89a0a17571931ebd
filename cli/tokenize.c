/* tokenize.c — `graft tokenize`: the token ids of texts under a trunk's
 * tokenizer (byte, or GPT-2's BPE), one input per line of stdin or --text,
 * one output line per input: the ids, or with --count their number. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "gpt2.h"
#include "graft.h"
#include "options.h"
#include "shared_options.h"
#include "tokenizer.h"

typedef struct {
    char trunk[GRAFT_OPT_STR];
    char vocab[GRAFT_OPT_STR];
    char text[GRAFT_OPT_STR];
    int count;
} tokenize_config_t;

#define OFF(field) offsetof(tokenize_config_t, field)
const graft_option_t cli_tokenize_options[] = {
    {"trunk", GRAFT_OPT_STRING, OFF(trunk), "", 0, -1,
     "use this checkpoint's tokenizer (its metadata, or GPT-2's BPE beside a Hugging Face "
     "model.safetensors); its weights are not read"},
    GRAFT_OPT_VOCAB(OFF(vocab)),
    {"text", GRAFT_OPT_STRING, OFF(text), "", 0, -1,
     "tokenize this text instead of the lines of stdin"},
    {"count", GRAFT_OPT_BOOL, OFF(count), "false", 0, -1,
     "print the number of tokens of each input instead of the ids"},
    GRAFT_OPT_END,
};
#undef OFF

/* The tokenizer the options name; NULL (logged) on error. */
static graft_tokenizer_t *open_tokenizer(const tokenize_config_t *cfg) {
    graft_tokenizer_t *tok = NULL;
    if (*cfg->vocab) return graft_tokenizer_load_gpt2(cfg->vocab, &tok) ? NULL : tok;
    if (!*cfg->trunk) return graft_tokenizer_new_bytes();
    graft_st_file_t *f = NULL;
    if (graft_st_open(cfg->trunk, &f)) return NULL;
    graft_gpt2_config_t c;
    int rc = graft_gpt2_read_config(f, &c);
    graft_st_close(&f);
    if (rc) return NULL;
    if (c.tokenizer == GRAFT_TOKENIZER_BYTE) return graft_tokenizer_new_bytes();
    char dir[4096];
    graft_path_dir(cfg->trunk, dir, sizeof dir);
    return graft_tokenizer_load_gpt2(dir, &tok) ? NULL : tok;
}

/* Prints one input's ids (or their count) as a line. */
static void print_tokens(const graft_tokenizer_t *tok, const char *text, size_t len, int count,
                         int32_t **ids, size_t *cap, size_t *total) {
    if (len + 1 > *cap) {
        free(*ids);
        *cap = len + 1;
        *ids = graft_xmalloc(*cap * sizeof **ids);
    }
    size_t n = graft_tokenizer_encode(tok, text, len, *ids, *cap);
    *total += n;
    if (count) {
        printf("%zu\n", n);
        return;
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)(*ids)[i]);
    putchar('\n');
}

int cmd_tokenize(int argc, char **argv) {
    tokenize_config_t cfg;
    int rc = graft_options_parse(cli_tokenize_options, &cfg, argc, argv,
                                 "usage: graft tokenize [--trunk FILE | --vocab DIR] [--text T] "
                                 "[--count]\n\n"
                                 "Prints the token ids of each input line of stdin (or of --text),\n"
                                 "one line each, under a trunk's tokenizer: the byte tokenizer or\n"
                                 "GPT-2's BPE. Special tokens are not added. An info line on\n"
                                 "stderr counts inputs, tokens and the rate (GRAFT_LOG_LEVEL=warn\n"
                                 "hides it).");
    if (rc == GRAFT_OPTS_HELP) return 0;
    if (rc) return 2;
    graft_tokenizer_t *tok = open_tokenizer(&cfg);
    if (!tok) return 1;
    int32_t *ids = NULL;
    size_t cap = 0, total = 0, inputs = 0;
    double t0 = graft_now();
    if (*cfg.text) {
        print_tokens(tok, cfg.text, strlen(cfg.text), cfg.count, &ids, &cap, &total);
        inputs = 1;
    } else {
        char *line = NULL;
        size_t line_cap = 0;
        ssize_t got;
        while ((got = getline(&line, &line_cap, stdin)) >= 0) {
            if (got > 0 && line[got - 1] == '\n') got--;
            print_tokens(tok, line, (size_t)got, cfg.count, &ids, &cap, &total);
            inputs++;
        }
        free(line);
    }
    double secs = graft_now() - t0;
    /* Through the log, so that GRAFT_LOG_LEVEL=warn leaves stderr quiet. */
    LOG_INFO("tokenize: %zu inputs, %zu tokens (%s tokenizer), %.0f tokens/s", inputs, total,
             graft_tokenizer_kind_name(tok->kind), secs > 0 ? total / secs : 0.0);
    free(ids);
    graft_tokenizer_destroy(&tok);
    return 0;
}

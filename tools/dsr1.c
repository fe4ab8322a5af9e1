/* `dsr1`: the command-line front door. Dispatches to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "dsr1_build_config.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"run", dsr1_cmd_run, "prefill a prompt, then teacher-force or generate; dump logits"},
    {"mkmodel", dsr1_cmd_mkmodel, "write a random checkpoint (tiny, r1-proxy) in the HF layout"},
    {"inspect", dsr1_cmd_inspect, "summarise a checkpoint: config, parameters, memory per slice"},
    {"tokenize", dsr1_cmd_tokenize, "text -> token ids with the checkpoint's tokenizer"},
    {"detokenize", dsr1_cmd_detokenize, "token ids -> text"},
    {"chat-template", dsr1_cmd_chat_template, "render a conversation with the chat template"},
    {"grammar", dsr1_cmd_grammar, "compile a grammar/JSON Schema; check an output against it"},
    {"serve", dsr1_cmd_serve, "serve the model over gRPC: streaming generation and batch jobs"},
    {"client", dsr1_cmd_client, "call a dsr1 server: generate, batch, status, cancel, list, info"},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dsr1 <command> [options]   (dsr1 <command> --help for details)\n\n"
            "DeepSeek-R1 inference engine, version %s.\n\ncommands:\n",
            DSR1_VERSION);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment: DSR1_LOG=error|warn|info|debug (default info), "
               "DSR1_THREADS=N (default: all cores),\n"
               "  DSR1_WEIGHTS=map|copy (default map: the checkpoint's pages mapped; copy: into\n"
               "  this process's memory, docs/operations.md)\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("dsr1 %s\n", DSR1_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "dsr1: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

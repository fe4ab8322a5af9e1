/* Subcommands of the `dsr1` tool. Each lives in its own cmd_<name>.c, takes the arguments
 * after the subcommand name (argv[0] is the subcommand), returns the process exit code
 * (0 ok, 1 failure, 2 usage error) and prints its own --help. */
#ifndef DSR1_TOOLS_COMMANDS_H
#define DSR1_TOOLS_COMMANDS_H

int dsr1_cmd_run(int argc, char **argv);
int dsr1_cmd_mkmodel(int argc, char **argv);
int dsr1_cmd_inspect(int argc, char **argv);
int dsr1_cmd_tokenize(int argc, char **argv);
int dsr1_cmd_detokenize(int argc, char **argv);
int dsr1_cmd_chat_template(int argc, char **argv);
int dsr1_cmd_client(int argc, char **argv);
int dsr1_cmd_serve(int argc, char **argv);
int dsr1_cmd_grammar(int argc, char **argv);

#endif

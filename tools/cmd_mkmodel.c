/* placeholder while the command is being written */
#include <stdio.h>
#include "commands.h"
int dsr1_cmd_mkmodel(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsr1 mkmodel: not built yet\n");
    return 1;
}

/* placeholder while the command is being written */
#include <stdio.h>
#include "commands.h"
int dsr1_cmd_inspect(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsr1 inspect: not built yet\n");
    return 1;
}

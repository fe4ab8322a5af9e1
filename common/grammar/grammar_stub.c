/* Placeholder until the engine's sources land: keeps the library non-empty. */
#include "grammar.h"

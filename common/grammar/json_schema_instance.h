/* Canonical compact serialisation of a JSON instance for a JSON Schema: the text that the
 * grammar dsr1_json_schema_to_ebnf() emits for that instance, so a valid instance written
 * this way must be accepted by the grammar (`dsr1 grammar check` and the conformance test
 * rely on it).
 *
 * Form: no whitespace; numbers positionally, without an exponent, in the fewest digits that
 * read back as the same double (1.0 -> 1, 1.5e-7 -> 0.00000015); strings
 * escape only `"`, `\` and control characters (\b \f \n \r \t, else \u00xx); object members
 * in the schema's property order (`properties` of the schema, then of its $ref target, its
 * allOf subschemas and the first anyOf/oneOf branch the value fits), then required names
 * not declared, then each present dependentRequired/dependencies name followed by the
 * names it requires, then the other members in document order (serialised with the first
 * patternProperties schema, else additionalProperties); a value equal to one of the
 * schema's enum/const values is written as the schema writes it. */
#ifndef DSR1_JSON_SCHEMA_INSTANCE_H
#define DSR1_JSON_SCHEMA_INSTANCE_H

#include <stddef.h>

#include "status.h"

/* schema may be NULL (plain canonical form). *out is malloc'd and NUL-terminated. Errors:
 * DSR1_ERR_INVALID_ARG for text that is not JSON (the message gives line and column). */
dsr1_status dsr1_json_schema_serialize_instance(const char *schema, size_t schema_len,
                                                const char *instance, size_t instance_len,
                                                char **out, size_t *out_len);

#endif

/* Protocol buffer messages <-> JSON, driven by protobuf-c's descriptors, for `dsr1 client`
 * (batch files in, results and server information out).
 *
 * The JSON form is proto3's JSON mapping with the proto field names (snake_case) as keys:
 * enums by name, maps as objects keyed by the key's text, 64-bit integers as numbers
 * (strings when beyond 2^63 - 1; both accepted on input), repeated fields as arrays.
 * bytes fields are not supported (the dsr1 API has none). */
#ifndef DSR1_TOOLS_PBJSON_H
#define DSR1_TOOLS_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "status.h"

/* Every field of msg, zero values included; of a oneof only its set member; unset message
 * fields are left out. NULL only when out of memory. */
json_t *dsr1_pbjson_from_msg(const ProtobufCMessage *msg);

/* Sets the fields of msg named by obj's keys. msg must be freshly initialised and
 * allocated the way protobuf_c_message_free_unpacked(msg, NULL) frees (malloc), which also
 * frees what this function stores in it, on success or failure. Errors name the field
 * ("stop[2]: expected a string"): an unknown key, a value of the wrong type or out of
 * range, a non-finite number. */
dsr1_status dsr1_pbjson_to_msg(const json_t *obj, ProtobufCMessage *msg);

/* A fresh heap message of type desc (free with protobuf_c_message_free_unpacked(m, NULL));
 * NULL when out of memory. */
ProtobufCMessage *dsr1_pbjson_new(const ProtobufCMessageDescriptor *desc);

#endif

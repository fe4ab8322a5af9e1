/* Protocol buffer messages <-> JSON through protobuf-c's reflection (see pbjson.h). Values
 * live in the message struct at each field's offset; repeated fields are a count at
 * quantifier_offset and an array at offset; a oneof member is present when the case at
 * quantifier_offset holds its id; a map is a repeated message of {key, value} entries. */
#include "pbjson.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

#define MEMBER(type, msg, off) (*(type *)((char *)(msg) + (off)))

static size_t value_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4; /* 32-bit integers, enums, float */
    }
}

static bool is_map(const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE) return false;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    size_t n = strlen(d->name);
    return d->n_fields == 2 && n > 5 && !strcmp(d->name + n - 5, "Entry") &&
           !strcmp(d->fields[0].name, "key") && !strcmp(d->fields[1].name, "value");
}

ProtobufCMessage *dsr1_pbjson_new(const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = malloc(desc->sizeof_message);
    if (m) desc->message_init(m);
    return m;
}

/* ---- message -> JSON ------------------------------------------------------------------ */

/* A float as the shortest decimal that reads back as the same float, so that 0.6f prints
 * as 0.6 and not 0.60000002384185791. */
static double float_shortest(float f)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static json_t *real_to_json(double x)
{
    if (isnan(x)) return json_string("NaN");
    if (isinf(x)) return json_string(x > 0 ? "Infinity" : "-Infinity");
    return json_real(x);
}

static json_t *string_to_json(const char *s)
{
    json_t *j = json_string(s);
    if (j) return j;
    char *fixed = NULL; /* not UTF-8: replace the bad bytes as the tokenizer does */
    size_t len = 0, cap = 0;
    if (!dsr1_utf8_lossy_append((const uint8_t *)s, strlen(s), &fixed, &len, &cap))
        j = json_stringn(fixed, len);
    free(fixed);
    return j;
}

static json_t *value_to_json(const ProtobufCFieldDescriptor *f, const void *p)
{
    char buf[24];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v = *(const uint64_t *)p;
        if (v <= INT64_MAX) return json_integer((json_int_t)v);
        snprintf(buf, sizeof(buf), "%" PRIu64, v);
        return json_string(buf);
    }
    case PROTOBUF_C_TYPE_FLOAT:
        return real_to_json(float_shortest(*(const float *)p));
    case PROTOBUF_C_TYPE_DOUBLE:
        return real_to_json(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING:
        return string_to_json(*(char *const *)p ? *(char *const *)p : "");
    case PROTOBUF_C_TYPE_MESSAGE:
        return dsr1_pbjson_from_msg(*(ProtobufCMessage *const *)p);
    default:
        return json_null(); /* bytes: not in the dsr1 API */
    }
}

static json_t *map_to_json(const ProtobufCFieldDescriptor *f, ProtobufCMessage *const *entries,
                           size_t n)
{
    const ProtobufCMessageDescriptor *d = f->descriptor;
    json_t *obj = json_object();
    for (size_t i = 0; obj && i < n; i++) {
        json_t *k = value_to_json(&d->fields[0], (char *)entries[i] + d->fields[0].offset);
        json_t *v = value_to_json(&d->fields[1], (char *)entries[i] + d->fields[1].offset);
        char *ks =
            k && json_is_string(k) ? strdup(json_string_value(k)) : json_dumps(k, JSON_ENCODE_ANY);
        if (!ks || !v || json_object_set_new(obj, ks, v)) {
            json_decref(obj);
            obj = NULL;
        }
        free(ks);
        json_decref(k);
    }
    return obj;
}

static json_t *field_to_json(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const void *p = (const char *)msg + f->offset;
    if (f->label != PROTOBUF_C_LABEL_REPEATED) return value_to_json(f, p);
    size_t n = MEMBER(size_t, msg, f->quantifier_offset);
    const char *arr = *(char *const *)p;
    if (is_map(f)) return map_to_json(f, (ProtobufCMessage *const *)arr, n);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, value_to_json(f, arr + i * value_size(f->type)))) {
            json_decref(a);
            a = NULL;
        }
    return a;
}

json_t *dsr1_pbjson_from_msg(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    json_t *obj = json_object();
    for (unsigned i = 0; obj && i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            MEMBER(uint32_t, msg, f->quantifier_offset) != f->id)
            continue;
        if (f->label != PROTOBUF_C_LABEL_REPEATED && f->type == PROTOBUF_C_TYPE_MESSAGE &&
            !MEMBER(ProtobufCMessage *, msg, f->offset))
            continue;
        json_t *v = field_to_json(msg, f);
        if (!v || json_object_set_new(obj, f->name, v)) {
            json_decref(obj);
            obj = NULL;
        }
    }
    return obj;
}

/* ---- JSON -> message ------------------------------------------------------------------ */

/* An integer, or a string of one (proto3 JSON writes 64-bit integers as strings). */
static bool json_to_i64(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (!json_is_string(v)) return false;
    const char *s = json_string_value(v);
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || !*s || *end) return false;
    *out = x;
    return true;
}

static bool json_to_u64(const json_t *v, uint64_t *out)
{
    int64_t x;
    if (json_is_integer(v)) {
        if (!json_to_i64(v, &x) || x < 0) return false;
        *out = (uint64_t)x;
        return true;
    }
    if (!json_is_string(v)) return false;
    const char *s = json_string_value(v);
    char *end;
    errno = 0;
    unsigned long long u = strtoull(s, &end, 10);
    if (errno || !*s || *end || *s == '-' || *s == '+' || *s == ' ') return false;
    *out = u;
    return true;
}

static dsr1_status set_int(const char *name, const json_t *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!json_to_i64(v, out))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected an integer", name);
    if (*out < lo || *out > hi)
        return dsr1_error(DSR1_ERR_RANGE,
                          "%s: %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]", name, *out,
                          lo, hi);
    return DSR1_OK;
}

static dsr1_status set_real(const ProtobufCFieldDescriptor *f, const char *name, const json_t *v,
                            double *out)
{
    if (!json_is_number(v)) return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected a number", name);
    *out = json_number_value(v);
    if (!isfinite(*out) || (f->type == PROTOBUF_C_TYPE_FLOAT && fabs(*out) > FLT_MAX))
        return dsr1_error(DSR1_ERR_RANGE, "%s: %g is not a finite float", name, *out);
    return DSR1_OK;
}

static dsr1_status set_enum(const ProtobufCFieldDescriptor *f, const char *name, const json_t *v,
                            int *out)
{
    const ProtobufCEnumDescriptor *e = f->descriptor;
    if (json_is_string(v)) {
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value_by_name(e, json_string_value(v));
        if (!ev)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: '%s' is not a %s", name,
                              json_string_value(v), e->short_name);
        *out = ev->value;
        return DSR1_OK;
    }
    int64_t x;
    dsr1_status st = set_int(name, v, INT32_MIN, INT32_MAX, &x);
    if (!st) *out = (int)x;
    return st;
}

/* Stores v as f's type at p; errors name the value `name` (the field, or "stop[2]"). */
static dsr1_status set_value(const ProtobufCFieldDescriptor *f, const char *name, const json_t *v,
                             void *p)
{
    dsr1_status st = DSR1_OK;
    int64_t i;
    uint64_t u;
    double d = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if (!(st = set_int(name, v, INT32_MIN, INT32_MAX, &i))) *(int32_t *)p = (int32_t)i;
        return st;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (!(st = set_int(name, v, 0, UINT32_MAX, &i))) *(uint32_t *)p = (uint32_t)i;
        return st;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return set_int(name, v, INT64_MIN, INT64_MAX, (int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (!json_to_u64(v, &u))
            return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected a non-negative integer", name);
        *(uint64_t *)p = u;
        return DSR1_OK;
    case PROTOBUF_C_TYPE_FLOAT:
        if (!(st = set_real(f, name, v, &d))) *(float *)p = (float)d;
        return st;
    case PROTOBUF_C_TYPE_DOUBLE:
        return set_real(f, name, v, (double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v))
            return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected true or false", name);
        *(protobuf_c_boolean *)p = json_is_true(v);
        return DSR1_OK;
    case PROTOBUF_C_TYPE_ENUM:
        return set_enum(f, name, v, (int *)p);
    case PROTOBUF_C_TYPE_STRING:
        if (!json_is_string(v))
            return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected a string", name);
        if (!(*(char **)p = strdup(json_string_value(v))))
            return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        return DSR1_OK;
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (!json_is_object(v))
            return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected an object", name);
        ProtobufCMessage *sub = dsr1_pbjson_new(f->descriptor);
        if (!sub) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        *(ProtobufCMessage **)p = sub;
        st = dsr1_pbjson_to_msg(v, sub);
        return st ? dsr1_error_context(st, "%s", name) : DSR1_OK;
    }
    default:
        return dsr1_error(DSR1_ERR_UNSUPPORTED, "%s: bytes fields are not supported", name);
    }
}

static dsr1_status set_map(const ProtobufCFieldDescriptor *f, const json_t *obj, void *base)
{
    if (!json_is_object(obj))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected an object", f->name);
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    size_t *n = (size_t *)((char *)base + f->quantifier_offset);
    ProtobufCMessage **arr = calloc(json_object_size(obj) + 1, sizeof(*arr));
    if (!arr) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    MEMBER(ProtobufCMessage **, base, f->offset) = arr;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        ProtobufCMessage *e = dsr1_pbjson_new(ed);
        if (!e) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
        arr[(*n)++] = e;
        json_t *k = json_string(key); /* integer keys: set_int reads their text */
        dsr1_status st = set_value(&ed->fields[0], "key", k, (char *)e + ed->fields[0].offset);
        json_decref(k);
        if (!st) st = set_value(&ed->fields[1], "value", v, (char *)e + ed->fields[1].offset);
        if (st) return dsr1_error_context(st, "%s[\"%s\"]", f->name, key);
    }
    return DSR1_OK;
}

static dsr1_status set_repeated(const ProtobufCFieldDescriptor *f, const json_t *a, void *base)
{
    if (!json_is_array(a))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "%s: expected an array", f->name);
    size_t size = value_size(f->type);
    size_t *n = (size_t *)((char *)base + f->quantifier_offset);
    char *arr = calloc(json_array_size(a) + 1, size);
    if (!arr) return dsr1_error(DSR1_ERR_NOMEM, "out of memory");
    MEMBER(char *, base, f->offset) = arr;
    for (size_t i = 0; i < json_array_size(a); i++) {
        char name[160];
        snprintf(name, sizeof(name), "%s[%zu]", f->name, i);
        (*n)++; /* counted first: a failure leaves NULL or a message to free */
        dsr1_status st = set_value(f, name, json_array_get(a, i), arr + i * size);
        if (st) return st;
    }
    return DSR1_OK;
}

dsr1_status dsr1_pbjson_to_msg(const json_t *obj, ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    if (!json_is_object(obj))
        return dsr1_error(DSR1_ERR_INVALID_ARG, "expected a JSON object for %s", d->short_name);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, key);
        if (!f)
            return dsr1_error(DSR1_ERR_INVALID_ARG, "unknown field '%s' in %s", key, d->short_name);
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t *which = (uint32_t *)((char *)msg + f->quantifier_offset);
            if (*which)
                return dsr1_error(DSR1_ERR_INVALID_ARG,
                                  "%s: another field of the same oneof is set too", key);
            *which = f->id;
        }
        dsr1_status st = is_map(f) ? set_map(f, v, msg)
                         : f->label == PROTOBUF_C_LABEL_REPEATED
                             ? set_repeated(f, v, msg)
                             : set_value(f, f->name, v, (char *)msg + f->offset);
        if (st) return st;
    }
    return DSR1_OK;
}

/* The JSON Schema converter (dsr1_json_schema_to_ebnf) and the instance serialiser:
 *   - a table of schemas with JSON texts each grammar must accept and must reject, matched
 *     byte by byte through the engine on a vocabulary of single bytes;
 *   - every error: status and message with its JSON pointer;
 *   - limits (nesting, enum size, rules, repetition, source size, merges): DSR1_ERR_RANGE;
 *   - integer ranges on seeded random bounds against plain comparisons;
 *   - the grammar text's structure (rules for $ref targets, bounded whitespace);
 *   - the canonical serialiser (property order, numbers, escapes). */
#include "grammar_test_util.h"
#include "json_schema_instance.h"

static dsr1_grammar_vocab *vocab;

static int setup(void **state)
{
    (void)state;
    vocab = gt_byte_vocab();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    dsr1_grammar_vocab_free(vocab);
    return 0;
}

static dsr1_grammar *compile_opts(const char *schema, const dsr1_grammar_opts *o)
{
    char *text;
    size_t n;
    if (dsr1_json_schema_to_ebnf(schema, strlen(schema), o, &text, &n)) {
        fprintf(stderr, "schema %s: %s\n", schema, dsr1_errmsg());
        fail();
    }
    assert_int_equal(strlen(text), n);
    dsr1_grammar *g = NULL;
    if (dsr1_grammar_compile_ebnf(vocab, text, n, o, &g)) {
        fprintf(stderr, "schema %s\ngrammar:\n%s\nengine: %s\n", schema, text, dsr1_errmsg());
        fail();
    }
    free(text);
    return g;
}

static void expect(const dsr1_grammar *g, const char *schema, const char *text, bool want)
{
    bool got = gt_match(g, text, strlen(text));
    if (got != want) {
        fprintf(stderr, "schema %s: %s was %s\n", schema, text, got ? "accepted" : "rejected");
        fail();
    }
}

#define MAXI 8
typedef struct {
    const char *schema;
    const char *accept[MAXI], *reject[MAXI];
} lang_case;

static const lang_case cases[] = {
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":"
     "\"string\"}},\"required\":[\"a\"],\"additionalProperties\":false}",
     {"{\"a\":1}", "{\"a\":-5,\"b\":\"x\"}"},
     {"{}", "{\"b\":\"x\",\"a\":1}", "{\"a\":1,\"c\":2}", "{\"a\":1.5}", "{\"a\":01}", "{ \"a\":1}",
      "{\"a\":1,}"}},
    /* additionalProperties absent: true; additional members after the declared ones */
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}",
     {"{\"a\":1,\"z\":[true,null]}", "{\"z\":{}}", "{}"},
     {"{\"a\":\"x\"}", "{\"z\":1,\"a\":1}"}},
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},\"required\":[\"b\"],"
     "\"additionalProperties\":false}",
     {"{\"b\":1}", "{\"a\":1,\"b\":2}", "{\"b\":1,\"c\":3}", "{\"a\":1,\"b\":2,\"c\":3}"},
     {"{\"a\":1}", "{\"c\":1}", "{\"a\":1,\"c\":2}", "{\"b\":1,\"a\":2}"}},
    /* a required name that is not declared takes additionalProperties */
    {"{\"type\":\"object\",\"required\":[\"k\"],\"additionalProperties\":{\"type\":\"integer\"}}",
     {"{\"k\":1}", "{\"k\":1,\"j\":2}"},
     {"{}", "{\"k\":\"x\"}"}},
    {"{\"type\":[\"string\",\"null\"]}", {"\"x\"", "null"}, {"1", "true"}},
    {"{\"type\":\"string\",\"nullable\":true}", {"null", "\"\""}, {"0"}},
    {"{\"enum\":[\"a\",1,null,{\"k\":[1]}]}",
     {"\"a\"", "1", "null", "{\"k\":[1]}"},
     {"\"b\"", "2", "{\"k\":[2]}"}},
    {"{\"type\":\"string\",\"enum\":[\"a\",1,\"b\"]}", {"\"a\"", "\"b\""}, {"1"}},
    {"{\"const\":{\"x\":\"y\\n\"}}", {"{\"x\":\"y\\n\"}"}, {"{\"x\":\"y\"}"}},
    {"{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":1,\"maxItems\":2}",
     {"[true]", "[true,false]"},
     {"[]", "[true,true,true]", "[1]"}},
    {"{\"type\":\"array\",\"prefixItems\":[{\"type\":\"integer\"},{\"type\":\"string\"}],"
     "\"items\":false}",
     {"[]", "[1]", "[1,\"a\"]"},
     {"[1,\"a\",2]", "[\"a\"]"}},
    {"{\"type\":\"array\",\"prefixItems\":[{\"const\":1}],\"minItems\":3,\"maxItems\":4}",
     {"[1,2,3]", "[1,\"a\",null,4]"},
     {"[1,2]", "[1,2,3,4,5]", "[2,2,3]"}},
    /* draft-07 tuples */
    {"{\"type\":\"array\",\"items\":[{\"const\":1}],\"additionalItems\":{\"type\":\"string\"}}",
     {"[1,\"x\",\"y\"]", "[]", "[1]"},
     {"[1,2]"}},
    {"{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\",\"maxLength\":1}]}",
     {"5", "\"a\""},
     {"\"ab\"", "1.5"}},
    {"{\"oneOf\":[{\"const\":\"x\"},{\"const\":\"y\"}]}", {"\"x\"", "\"y\""}, {"\"z\""}},
    {"{\"allOf\":[{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},"
     "\"required\":[\"a\"]},{\"properties\":{\"b\":{\"type\":\"integer\"}},"
     "\"required\":[\"b\"]}]}",
     {"{\"a\":\"x\",\"b\":1}"},
     {"{\"a\":\"x\"}", "{\"b\":1}", "{\"a\":1,\"b\":1}"}},
    /* allOf: a name declared on one side only meets the other side's additionalProperties */
    {"{\"allOf\":[{\"properties\":{\"a\":{}},\"additionalProperties\":false},"
     "{\"properties\":{\"b\":{}}}],\"type\":\"object\"}",
     {"{\"a\":1}", "{}"},
     {"{\"b\":1}", "{\"a\":1,\"b\":2}"}},
    {"{\"type\":\"integer\",\"allOf\":[{\"minimum\":3},{\"maximum\":5},{\"minimum\":4}]}",
     {"4", "5"},
     {"3", "6"}},
    /* siblings of anyOf are distributed into the branches */
    {"{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"string\"}},\"required\":[\"k\"],"
     "\"additionalProperties\":false,\"oneOf\":[{\"properties\":{\"v\":{\"type\":\"integer\"}}},"
     "{\"properties\":{\"w\":{\"type\":\"null\"}}}]}",
     {"{\"k\":\"a\"}"},
     {"{\"k\":\"a\",\"v\":1}", "{}"}},
    {"{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\"},"
     "\"next\":{\"anyOf\":[{\"$ref\":\"#/$defs/node\"},{\"type\":\"null\"}]}},"
     "\"required\":[\"v\",\"next\"],\"additionalProperties\":false}},"
     "\"$ref\":\"#/$defs/node\"}",
     {"{\"v\":1,\"next\":null}", "{\"v\":1,\"next\":{\"v\":2,\"next\":null}}"},
     {"{\"v\":1}", "{\"v\":1,\"next\":{\"v\":2}}"}},
    /* recursion through the root */
    {"{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}", {"[]", "[[],[[]]]"}, {"[1]"}},
    {"{\"definitions\":{\"p\":{\"type\":\"integer\",\"minimum\":0}},\"type\":\"array\","
     "\"items\":{\"$ref\":\"#/definitions/p\"}}",
     {"[0,5]", "[]"},
     {"[-1]"}},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"$ref\":"
     "\"#/properties/a\"}},\"required\":[\"a\",\"b\"]}",
     {"{\"a\":1,\"b\":2}"},
     {"{\"a\":1,\"b\":\"x\"}"}},
    /* $ref with siblings (2020-12): both apply */
    {"{\"$defs\":{\"s\":{\"type\":\"string\"}},\"$ref\":\"#/$defs/s\",\"maxLength\":2}",
     {"\"ab\""},
     {"\"abc\"", "1"}},
    /* draft-07: a $ref's siblings are ignored */
    {"{\"$schema\":\"http://json-schema.org/draft-07/schema#\",\"definitions\":{\"s\":"
     "{\"type\":\"string\"}},\"$ref\":\"#/definitions/s\",\"maxLength\":2}",
     {"\"ab\"", "\"abc\""},
     {"1"}},
    {"{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}",
     {"\"ab\"", "\"\xc3\xa9\xc3\xa9\"", "\"a\\n\"", "\"\\u00e9\\\"\"", "\"\\ud83d\\ude00x\""},
     {"\"a\"", "\"abcd\"", "\"\xc3\xa9\""}},
    {"{\"type\":\"string\"}", {"\"\"", "\"\\/\\b\\f\\r\\t\""}, {"\"\x01\"", "\"\\x\"", "\"a"}},
    {"{\"type\":\"string\",\"pattern\":\"^[a-z]+\\\\.json$\"}",
     {"\"ab.json\""},
     {"\"ab.jsonx\"", "\"Ab.json\"", "\"abxjson\""}},
    /* unanchored, and escape-aware: the quote in the pattern is \" in the JSON text */
    {"{\"type\":\"string\",\"pattern\":\"x\\\"y\"}",
     {"\"ax\\\"yb\"", "\"x\\u0022y\""},
     {"\"axyb\""}},
    {"{\"type\":\"string\",\"pattern\":\"^a.c$\"}",
     {"\"abc\"", "\"a\\\"c\"", "\"a\\\\c\"", "\"a\\tc\""},
     {"\"a\\nc\"", "\"ac\""}},
    {"{\"type\":\"string\",\"pattern\":\"^(?:ab|c){2,3}\\\\d?$\"}",
     {"\"abc\"", "\"ccc7\"", "\"abab\""},
     {"\"c\"", "\"cccc\"", "\"abx\""}},
    {"{\"type\":\"string\",\"pattern\":\"^[^a-y]$\"}",
     {"\"z\"", "\"\\n\"", "\"\\\"\"", "\"\\u0001\""},
     {"\"b\"", "\"zz\""}},
    {"{\"type\":\"string\",\"format\":\"date\"}",
     {"\"2024-02-29\""},
     {"\"2024-13-01\"", "\"24-01-01\""}},
    {"{\"type\":\"string\",\"format\":\"date-time\"}",
     {"\"2024-01-01T10:00:00Z\"", "\"2024-01-01t05:29:60.5+05:30\""},
     {"\"2024-01-01 10:00:00Z\"", "\"2024-01-01T10:00:00\""}},
    {"{\"type\":\"string\",\"format\":\"time\"}", {"\"10:00:00Z\""}, {"\"25:00:00Z\""}},
    {"{\"type\":\"string\",\"format\":\"uuid\"}",
     {"\"123e4567-e89b-12d3-a456-426614174000\""},
     {"\"123e4567e89b12d3a456426614174000\""}},
    {"{\"type\":\"string\",\"format\":\"email\"}",
     {"\"joe.bloggs@example.com\"", "\"\\\"joe bloggs\\\"@example.com\"", "\"a@[127.0.0.1]\""},
     {"\"joe\"", "\"@example.com\"", "\"a..b@example.com\""}},
    {"{\"type\":\"string\",\"format\":\"ipv4\"}",
     {"\"192.168.0.1\""},
     {"\"256.1.1.1\"", "\"01.1.1.1\""}},
    {"{\"type\":\"string\",\"format\":\"ipv6\"}",
     {"\"::1\"", "\"2001:db8::8a2e:370:7334\"", "\"::ffff:192.168.0.1\"", "\"1:2:3:4:5:6:7:8\""},
     {"\"12345::\"", "\"1:2:3:4:5:6:7:8:9\""}},
    {"{\"type\":\"string\",\"format\":\"hostname\"}",
     {"\"www.example.com\""},
     {"\"-a.com\"", "\"a b\"", "\"example.\""}},
    {"{\"type\":\"string\",\"format\":\"duration\"}",
     {"\"P1DT2H\"", "\"P4W\"", "\"PT5S\"", "\"P1Y2M\""},
     {"\"P\"", "\"PT\"", "\"P1H\""}},
    {"{\"type\":\"string\",\"format\":\"uri\"}",
     {"\"https://x.org/a?b#c\"", "\"urn:isbn:1\""},
     {"\"//x.org\"", "\"a b:c\""}},
    {"{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":10}",
     {"1", "9"},
     {"0", "10", "-1"}},
    {"{\"type\":\"integer\",\"minimum\":-20,\"maximum\":-3}",
     {"-20", "-3", "-10"},
     {"-2", "-21", "0", "3"}},
    {"{\"type\":\"number\"}", {"-0.5e-3", "10", "0", "1E+2"}, {"01", ".5", "1.", "-", "1e"}},
    /* bounded numbers: exact decimal comparison, no exponent */
    {"{\"type\":\"number\",\"minimum\":1.1}",
     {"1.1", "1.10", "1.15", "2", "1000.5"},
     {"1.09", "1", "0.5", "-3", "1e3", "1.099999"}},
    {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":1}",
     {"0.001", "1", "1.000", "0.5"},
     {"0", "0.000", "-0.1", "1.0001", "-0"}},
    {"{\"type\":\"number\",\"minimum\":-2.5,\"exclusiveMaximum\":3}",
     {"-2.5", "-2.50", "0", "2.999", "-0.5"},
     {"-2.51", "3", "3.0", "-3"}},
    {"{\"minimum\":0.25,\"maximum\":0.75}",
     {"0.25", "0.7", "0.75", "\"s\""},
     {"0.2", "0.751", "1"}},
    {"{\"type\":\"boolean\"}", {"true", "false"}, {"null", "1"}},
    {"{}", {"{\"a\":[1,2.5e3,\"x\"]}", "null", "\"s\""}, {"{a:1}", "[1,]"}},
    {"true", {"[]", "0"}, {"nul"}},
    /* no type: keywords apply to their own type, other types pass */
    {"{\"minLength\":2,\"required\":[\"a\"]}", {"\"ab\"", "5", "{\"a\":0}", "[]"}, {"\"a\"", "{}"}},
    /* annotations and non-vocabulary keys are ignored */
    {"{\"title\":\"t\",\"description\":\"d\",\"examples\":[1],\"default\":1,\"$comment\":\"c\","
     "\"deprecated\":true,\"readOnly\":true,\"x-custom\":{\"not\":1},\"type\":\"integer\"}",
     {"1"},
     {"\"1\""}},
    /* a false property schema: the name can never appear; a false item: only [] */
    {"{\"type\":\"object\",\"properties\":{\"a\":false,\"b\":{}}}",
     {"{\"b\":1}", "{}"},
     {"{\"a\":1}"}},
    {"{\"type\":\"array\",\"items\":false}", {"[]"}, {"[1]"}},
    /* format date: days per month, February 29 only in leap years, years 0001-9999 */
    {"{\"format\":\"date\",\"type\":\"string\"}",
     {"\"2020-02-29\"", "\"2000-02-29\"", "\"2021-04-30\"", "\"2021-12-31\"", "\"0004-02-29\"",
      "\"0001-01-01\""},
     {"\"2020-02-30\"", "\"2019-02-29\"", "\"1900-02-29\"", "\"2021-04-31\"", "\"2021-13-01\"",
      "\"2021-00-10\"", "\"0000-01-01\"", "\"2021-06-00\""}},
    /* time: 00-23, 00-59; a leap second is 23:59:60 UTC in local time */
    {"{\"format\":\"time\",\"type\":\"string\"}",
     {"\"23:59:59Z\"", "\"00:00:00.5+01:00\"", "\"23:59:60Z\"", "\"15:59:60-08:00\"",
      "\"01:29:60+01:30\"", "\"23:59:60-00:00\""},
     {"\"24:00:00Z\"", "\"12:60:00Z\"", "\"12:00:60Z\"", "\"23:59:60+01:00\"", "\"15:59:60-07:00\"",
      "\"12:00:00\""}},
    {"{\"format\":\"date-time\",\"type\":\"string\"}",
     {"\"2024-02-29T23:59:60Z\"", "\"1998-12-31T15:59:60.123-08:00\""},
     {"\"2023-02-29T12:00:00Z\"", "\"2024-02-29T22:59:60Z\""}},
    /* patternProperties: one schema, additionalProperties false; a declared name matching
     * a pattern takes both schemas */
    {"{\"type\":\"object\",\"properties\":{\"A\":{\"type\":\"string\"}},"
     "\"patternProperties\":{\"^[a-z]+$\":{\"type\":\"integer\"}},\"additionalProperties\":false}",
     {"{\"A\":\"x\",\"ab\":1}", "{\"q\":2,\"r\":3}", "{}"},
     {"{\"A\":\"x\",\"Ab\":1}", "{\"q\":\"s\"}", "{\"a1\":1}", "{\"A\":1}"}},
    {"{\"properties\":{\"a\":{\"minimum\":5}},\"patternProperties\":{\".*\":{\"maximum\":10}}}",
     {"{\"a\":7}", "{\"a\":5,\"x\":-3}", "{\"\":10}"},
     {"{\"a\":11}", "{\"a\":4}", "{\"x\":11}"}},
    /* patterns whose schemas accept anything, additionalProperties absent: no constraint */
    {"{\"patternProperties\":{\"^x-\":{}},\"required\":[\"x-a\"]}",
     {"{\"x-a\":[1]}", "{\"x-a\":1,\"b\":2}"},
     {"{}"}},
    /* minProperties / maxProperties: members counted, declared and additional */
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},\"minProperties\":2,"
     "\"maxProperties\":2}",
     {"{\"a\":1,\"b\":2}", "{\"b\":1,\"c\":2}", "{\"a\":1,\"z\":2}", "{\"y\":1,\"z\":2}"},
     {"{}", "{\"a\":1}", "{\"a\":1,\"b\":2,\"c\":3}", "{\"x\":1,\"y\":2,\"z\":3}"}},
    {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"a\"],\"minProperties\":3}",
     {"{\"a\":1,\"b\":2,\"c\":3}", "{\"a\":1,\"b\":2,\"c\":3,\"d\":4}"},
     {"{\"a\":1}", "{\"a\":1,\"b\":2}", "{\"b\":2,\"c\":3,\"d\":4}"}},
    {"{\"type\":\"object\",\"maxProperties\":1}", {"{}", "{\"a\":[]}"}, {"{\"a\":1,\"b\":2}"}},
    /* a length beside a pattern of one character class repeated: the bounds intersect */
    {"{\"type\":\"string\",\"pattern\":\"^[a-z\\\"-]+$\",\"minLength\":2,\"maxLength\":4}",
     {"\"ab\"", "\"a-\\\"d\"", "\"abcd\""},
     {"\"a\"", "\"abcde\"", "\"aB\"", "\"\""}},
    {"{\"type\":\"string\",\"pattern\":\"^\\\\d{2,9}$\",\"maxLength\":3}",
     {"\"12\"", "\"123\""},
     {"\"1\"", "\"1234\"", "\"12a\""}},
    /* a fixed-length format: bounds that hold for every value are no constraint */
    {"{\"type\":\"string\",\"format\":\"date\",\"minLength\":10,\"maxLength\":12}",
     {"\"2024-02-29\""},
     {"\"2023-02-29\"", "\"x\""}},
    /* dependencies (array form): a present requires b */
    {"{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{},\"c\":{}},"
     "\"dependentRequired\":{\"a\":[\"b\"]},\"dependencies\":{\"c\":[\"a\"]}}",
     {"{}", "{\"b\":1}", "{\"a\":1,\"b\":2}", "{\"a\":1,\"b\":2,\"c\":3}"},
     {"{\"a\":1}", "{\"b\":1,\"c\":3}", "{\"a\":1,\"c\":3}"}},
};

static void test_languages(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const lang_case *t = &cases[i];
        dsr1_grammar *g = compile_opts(t->schema, NULL);
        for (int k = 0; k < MAXI && t->accept[k]; k++)
            if (*t->accept[k]) expect(g, t->schema, t->accept[k], true);
        for (int k = 0; k < MAXI && t->reject[k]; k++) expect(g, t->schema, t->reject[k], false);
        dsr1_grammar_free(g);
    }
}

static void test_strict_and_whitespace(void **state)
{
    (void)state;
    const char *s = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\"}},"
                    "\"required\":[\"a\"]}";
    dsr1_grammar_opts strict = {.strict_objects = true};
    dsr1_grammar *g = compile_opts(s, &strict);
    expect(g, s, "{\"a\":[]}", true);
    expect(g, s, "{\"a\":[],\"z\":1}", false);
    dsr1_grammar_free(g);
    dsr1_grammar_opts ws = {.json_whitespace = true};
    g = compile_opts(s, &ws);
    expect(g, s, "{ \"a\" : [ 1 ,\n\t2 ] ,\r\"z\":1 }", true);
    expect(g, s, "{\"a\":[]}", true);
    char many[64];
    snprintf(many, sizeof many, "{%21s\"a\":[]}", "");
    expect(g, s, many, false); /* whitespace is bounded */
    dsr1_grammar_free(g);
    g = compile_opts(s, NULL);
    expect(g, s, "{ \"a\":[]}", false);
    dsr1_grammar_free(g);
}

/* ---- errors ---- */

typedef struct {
    const char *schema;
    dsr1_status st;
    const char *msg;
} err_case;

static const err_case errors[] = {
    {"{\"properties\":{\"a\":{\"patternProperties\":{\"x\":{\"type\":\"integer\"}}}}}",
     DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'patternProperties' at /properties/a: a pattern beside "
     "additionalProperties other than false"},
    {"{\"patternProperties\":{\"a\":{\"type\":\"integer\"},\"b\":{}},"
     "\"additionalProperties\":false}",
     DSR1_ERR_INVALID_ARG, "at the root: patterns with different schemas"},
    {"{\"properties\":{\"ab\":{}},\"patternProperties\":{\"^a\":{\"type\":\"integer\"}},"
     "\"additionalProperties\":false}",
     DSR1_ERR_INVALID_ARG, "the declared name 'ab' matches the pattern '^a'"},
    {"{\"allOf\":[{\"patternProperties\":{\".*\":{}}},{\"properties\":{\"a\":{}}}]}",
     DSR1_ERR_INVALID_ARG, "'patternProperties' beside another subschema's properties"},
    {"{\"properties\":{\"o\":{\"dependencies\":{\"a\":{\"required\":[\"b\"]}}}}}",
     DSR1_ERR_INVALID_ARG, "unsupported keyword 'dependencies' at /properties/o/dependencies/a"},
    {"{\"dependentRequired\":{\"a\":[\"b\"],\"b\":[\"c\"],\"c\":[\"d\"],\"d\":[\"e\"],"
     "\"e\":[\"f\"],\"f\":[\"g\"],\"g\":[\"h\"]}}",
     DSR1_ERR_RANGE, "more than 6 dependencies"},
    {"{\"not\":{}}", DSR1_ERR_INVALID_ARG, "unsupported keyword 'not' at the root"},
    {"{\"if\":{},\"then\":{}}", DSR1_ERR_INVALID_ARG, "unsupported keyword '"},
    {"{\"items\":{\"uniqueItems\":true}}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'uniqueItems' at /items"},
    {"{\"type\":\"integer\",\"multipleOf\":2}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'multipleOf' at the root"},
    {"{\"type\":\"object\",\"minProperties\":5000}", DSR1_ERR_RANGE,
     "'minProperties' at the root: 0 properties x a count up to 5000"},
    {"{\"prefixItems\":[{\"contains\":{}}]}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'contains' at /prefixItems/0"},
    {"{\"$defs\":{\"d\":{\"dependentSchemas\":{}}},\"$ref\":\"#/$defs/d\"}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'dependentSchemas' at /$defs/d"},
    {"{\"properties\":{\"a~b/c\":{\"propertyNames\":{}}}}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'propertyNames' at /properties/a~0b~1c"},
    {"{\"unevaluatedProperties\":false}", DSR1_ERR_INVALID_ARG,
     "unsupported keyword 'unevaluatedProperties'"},
    {"{\"properties\":{\"c\":{\"type\":\"string\",\"format\":\"color\"}}}", DSR1_ERR_INVALID_ARG,
     "unsupported format 'color' at /properties/c"},
    {"{\"properties\":{\"n\":{\"type\":\"number\",\"minimum\":1e-100}}}", DSR1_ERR_RANGE,
     "'minimum' at /properties/n: 1e-100 has more than 79 decimal places"},
    {"{\"$ref\":\"http://x/y.json\"}", DSR1_ERR_INVALID_ARG, "unsupported $ref 'http://x/y.json'"},
    {"{\"items\":{\"$ref\":\"#/$defs/nope\"}}", DSR1_ERR_INVALID_ARG,
     "$ref '#/$defs/nope' at /items points at nothing"},
    {"{\"properties\":{\"p\":{\"type\":\"string\",\"pattern\":\"(a)\\\\1\"}}}",
     DSR1_ERR_INVALID_ARG, "'pattern' at /properties/p: backreferences"},
    {"{\"type\":\"string\",\"pattern\":\"a(?=b)\"}", DSR1_ERR_INVALID_ARG, "lookahead"},
    {"{\"type\":\"string\",\"pattern\":\"\\\\bword\"}", DSR1_ERR_INVALID_ARG, "word boundaries"},
    {"{\"type\":\"string\",\"pattern\":\"a^b\"}", DSR1_ERR_INVALID_ARG, "'^' is supported only"},
    {"{\"type\":\"string\",\"pattern\":\"(a\"}", DSR1_ERR_INVALID_ARG, "an unclosed group"},
    {"{\"type\":\"string\",\"pattern\":\"\\\\p{L}\"}", DSR1_ERR_INVALID_ARG, "property escapes"},
    {"{\"type\":\"string\",\"pattern\":\"a\",\"maxLength\":3}", DSR1_ERR_INVALID_ARG,
     "'maxLength' beside 'pattern' at the root"},
    {"{\"type\":\"string\",\"pattern\":\"^[a-z]+x$\",\"minLength\":3}", DSR1_ERR_INVALID_ARG,
     "'minLength' beside 'pattern' at the root is not supported"},
    {"{\"type\":\"string\",\"format\":\"email\",\"maxLength\":30}", DSR1_ERR_INVALID_ARG,
     "'maxLength' beside 'format' at the root"},
    {"{\"allOf\":[{\"pattern\":\"a\"},{\"pattern\":\"b\"}]}", DSR1_ERR_INVALID_ARG,
     "two different 'pattern' values cannot be merged"},
    {"{\"enum\":[\"a\"],\"minLength\":1}", DSR1_ERR_INVALID_ARG,
     "'minLength' beside 'enum'/'const' at the root"},
    {"{\"type\":\"object\",\n \"properties\": {,}}", DSR1_ERR_INVALID_ARG, "line 2 column"},
    {"{\"type\":\"object\",\"type\":\"array\"}", DSR1_ERR_INVALID_ARG, "duplicate"},
    {"false", DSR1_ERR_INVALID_ARG, "no JSON value satisfies the schema"},
    {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", DSR1_ERR_INVALID_ARG,
     "no JSON value satisfies"},
    {"{\"$ref\":\"#\"}", DSR1_ERR_INVALID_ARG, "no JSON value satisfies"},
    {"{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/b\"},\"b\":{\"$ref\":\"#/$defs/a\"}},"
     "\"$ref\":\"#/$defs/a\"}",
     DSR1_ERR_INVALID_ARG, "a $ref cycle with no base case"},
    {"{\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#\"}},\"required\":[\"n\"]}",
     DSR1_ERR_INVALID_ARG, "no JSON value satisfies"},
    {"{\"type\":\"strin\"}", DSR1_ERR_INVALID_ARG, "'type' at the root"},
    {"{\"$defs\":{\"a\":{\"$id\":\"a.json\",\"$defs\":{\"b\":{}},\"$ref\":\"#/$defs/b\"}},"
     "\"$ref\":\"#/$defs/a\"}",
     DSR1_ERR_INVALID_ARG, "enters a subschema with its own $id"},
    {"{\"items\":{\"$id\":\"i.json\",\"items\":{\"$ref\":\"#\"}}}", DSR1_ERR_INVALID_ARG,
     "$ref '#' at /items/items is inside a subschema with its own $id"},
    {"{\"properties\":{\"s\":{\"minLength\":-1}}}", DSR1_ERR_INVALID_ARG,
     "'minLength' at /properties/s must be a non-negative integer"},
    {"{\"anyOf\":[]}", DSR1_ERR_INVALID_ARG, "'anyOf' at the root must be a non-empty array"},
    {"{\"properties\":{\"a\":3}}", DSR1_ERR_INVALID_ARG,
     "the schema at /properties/a must be an object or a boolean"},
    {"{\"type\":\"string\",\"maxLength\":2000000}", DSR1_ERR_RANGE,
     "'maxLength' 2000000 at the root exceeds the repetition limit 1000 squared (max_repeat)"},
    {"{\"type\":\"array\",\"minItems\":2000}", DSR1_ERR_RANGE, "(max_repeat)"},
    {"{\"type\":\"string\",\"pattern\":\"a{2000}\"}", DSR1_ERR_RANGE, "(max_repeat)"},
    {"{\"type\":\"integer\",\"minimum\":1e19}", DSR1_ERR_RANGE, "'minimum' at the root"},
    {"{\"allOf\":[{\"$ref\":\"#\"}]}", DSR1_ERR_RANGE, "a $ref cycle through allOf"},
};

static void expect_error(const char *schema, size_t len, const dsr1_grammar_opts *o, dsr1_status st,
                         const char *msg)
{
    char *text = (char *)0x1;
    size_t n = 7;
    dsr1_status got = dsr1_json_schema_to_ebnf(schema, len, o, &text, &n);
    if (got != st || !strstr(dsr1_errmsg(), msg)) {
        fprintf(stderr, "schema %.200s: status %d '%s', wanted %d '%s'\n", schema, got,
                dsr1_errmsg(), st, msg);
        fail();
    }
    assert_ptr_equal(text, (char *)0x1); /* outputs untouched on failure */
    assert_int_equal(n, 7);
}

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        expect_error(errors[i].schema, strlen(errors[i].schema), NULL, errors[i].st, errors[i].msg);
}

/* ---- limits ---- */

static char *repeat_schema(const char *head, const char *unit, int n, const char *mid,
                           const char *tail_unit, const char *tail)
{
    size_t len =
        strlen(head) + n * (strlen(unit) + strlen(tail_unit)) + strlen(mid) + strlen(tail) + 1;
    char *s = malloc(len), *p = s;
    assert_non_null(s);
    p += sprintf(p, "%s", head);
    for (int i = 0; i < n; i++) p += sprintf(p, "%s", unit);
    p += sprintf(p, "%s", mid);
    for (int i = 0; i < n; i++) p += sprintf(p, "%s", tail_unit);
    sprintf(p, "%s", tail);
    return s;
}

static void test_limits(void **state)
{
    (void)state;
    /* nesting */
    char *s = repeat_schema("", "{\"properties\":{\"a\":", 200, "{}", "}}", "");
    expect_error(s, strlen(s), NULL, DSR1_ERR_RANGE, "nested deeper than 128");
    free(s);
    /* a nesting that fits compiles */
    s = repeat_schema("", "{\"type\":\"object\",\"properties\":{\"a\":", 40, "{}", "}}", "");
    dsr1_grammar *g = compile_opts(s, NULL);
    dsr1_grammar_free(g);
    free(s);
    /* enum size */
    s = repeat_schema("{\"enum\":[", "1,", 10001, "2", "", "]}");
    expect_error(s, strlen(s), NULL, DSR1_ERR_RANGE, "has 10002 values (limit 10000)");
    free(s);
    /* rules */
    s = repeat_schema("{\"$defs\":{\"a\":{\"type\":\"integer\"}},\"type\":\"array\","
                      "\"prefixItems\":[",
                      "{\"$ref\":\"#/$defs/a\"},{\"items\":{\"$ref\":\"#/$defs/a\"}},", 20, "{}",
                      "", "]}");
    dsr1_grammar_opts few = {.max_rules = 5};
    expect_error(s, strlen(s), &few, DSR1_ERR_RANGE, "(max_rules)");
    free(s);
    /* source size */
    dsr1_grammar_opts small = {.max_source = 10};
    const char *obj = "{\"type\":\"object\"}";
    expect_error(obj, strlen(obj), &small, DSR1_ERR_RANGE, "(max_source)");
    /* repetition limit from the options */
    dsr1_grammar_opts rep = {.max_repeat = 10};
    const char *str = "{\"type\":\"string\",\"maxLength\":101}";
    expect_error(str, strlen(str), &rep, DSR1_ERR_RANGE,
                 "repetition limit 10 squared (max_repeat)");
    /* past max_repeat a length is counted in blocks: exact for every length, with characters
     * of one to twelve bytes of JSON text (raw, multi-byte, escapes, surrogate pairs) */
    static const char *const units[] = {"a",       "\xc3\xa9",       "\xe2\x82\xac",    "\\n",
                                        "\\u00e9", "\\ud83d\\ude00", "\xf0\x9f\x98\x80"};
    static const long bounds[][2] = {{0, 37}, {13, 37}, {11, 100}, {20, 20}, {25, -1}, {0, 11}};
    uint64_t rs = 20261206;
    for (size_t b = 0; b < sizeof bounds / sizeof bounds[0]; b++) {
        char sch[128];
        if (bounds[b][1] < 0)
            snprintf(sch, sizeof sch, "{\"type\":\"string\",\"minLength\":%ld}", bounds[b][0]);
        else
            snprintf(sch, sizeof sch, "{\"type\":\"string\",\"minLength\":%ld,\"maxLength\":%ld}",
                     bounds[b][0], bounds[b][1]);
        dsr1_grammar *g = compile_opts(sch, &rep);
        for (long len = 0; len <= 110; len++) {
            char txt[110 * 12 + 3];
            size_t n = 0;
            txt[n++] = '"';
            for (long i = 0; i < len; i++) {
                rs = rs * 6364136223846793005ull + 1442695040888963407ull;
                const char *u = units[(rs >> 33) % (sizeof units / sizeof units[0])];
                memcpy(txt + n, u, strlen(u));
                n += strlen(u);
            }
            txt[n++] = '"';
            txt[n] = '\0';
            bool want = len >= bounds[b][0] && (bounds[b][1] < 0 || len <= bounds[b][1]);
            expect(g, sch, txt, want);
        }
        dsr1_grammar_free(g);
    }
    /* long tuples and long names nest: bounded */
    s = repeat_schema("{\"prefixItems\":[", "{},", 1001, "{}", "", "]}");
    expect_error(s, strlen(s), NULL, DSR1_ERR_RANGE, "has more than 1000 entries");
    free(s);
    s = repeat_schema("{\"properties\":{\"", "x", 2000, "\":{}", "", "}}");
    expect_error(s, strlen(s), NULL, DSR1_ERR_RANGE, "longer than 1024 characters");
    free(s);
    /* the size of the grammar itself: 120 enums of 9,000 values */
    size_t cap = 8u << 20;
    char *huge = malloc(cap), *q = huge;
    assert_non_null(huge);
    q += sprintf(q, "{\"type\":\"object\",\"properties\":{");
    for (int i = 0; i < 120; i++) {
        q += sprintf(q, "%s\"p%d\":{\"enum\":[", i ? "," : "", i);
        for (int k = 0; k < 9000; k++) q += sprintf(q, "%s%d", k ? "," : "", k);
        q += sprintf(q, "]}");
    }
    q += sprintf(q, "}}");
    dsr1_grammar_opts roomy = {.max_source = cap};
    expect_error(huge, (size_t)(q - huge), &roomy, DSR1_ERR_RANGE, "schema too complex");
    free(huge);
    /* anyOf distributed over allOf: 2^20 branches */
    s = repeat_schema("{\"allOf\":[", "{\"anyOf\":[{\"minLength\":1},{\"maxLength\":9}]},", 20,
                      "{}", "", "]}");
    expect_error(s, strlen(s), NULL, DSR1_ERR_RANGE, "merges");
    free(s);
    /* many optional properties: the text stays linear (one rule per property at most) */
    char *text;
    size_t n;
    char *big = malloc(600000), *p = big;
    p += sprintf(p, "{\"type\":\"object\",\"properties\":{");
    for (int i = 0; i < 3000; i++)
        p += sprintf(p, "%s\"p%d\":{\"type\":\"object\"}", i ? "," : "", i);
    sprintf(p, "}}");
    assert_int_equal(dsr1_json_schema_to_ebnf(big, strlen(big), NULL, &text, &n), DSR1_OK);
    assert_true(n < 3000 * 200); /* linear, not quadratic */
    free(text);
    free(big);
}

/* ---- integer ranges against comparisons ---- */

static long long rand_bound(uint64_t *rs)
{
    int digits = 1 + (int)(gt_rand(rs) % 7);
    long long v = 0;
    for (int i = 0; i < digits; i++) v = v * 10 + (long long)(gt_rand(rs) % 10);
    return gt_rand(rs) % 3 == 0 ? -v : v;
}

static void test_integer_ranges(void **state)
{
    (void)state;
    uint64_t rs = 0x5eed1234abcdull;
    for (int it = 0; it < 150; it++) {
        long long a = rand_bound(&rs), b = rand_bound(&rs);
        if (a > b) {
            long long t = a;
            a = b;
            b = t;
        }
        int kind = (int)(gt_rand(&rs) % 4); /* both, min only, max only, exclusive both */
        char schema[200];
        if (kind == 0)
            snprintf(schema, sizeof schema,
                     "{\"type\":\"integer\",\"minimum\":%lld,\"maximum\":%lld}", a, b);
        else if (kind == 1)
            snprintf(schema, sizeof schema, "{\"type\":\"integer\",\"minimum\":%lld}", a);
        else if (kind == 2)
            snprintf(schema, sizeof schema, "{\"type\":\"integer\",\"maximum\":%lld}", b);
        else if (b - a >= 2)
            snprintf(schema, sizeof schema,
                     "{\"type\":\"integer\",\"exclusiveMinimum\":%lld,\"exclusiveMaximum\":%lld}",
                     a, b);
        else
            continue;
        dsr1_grammar *g = compile_opts(schema, NULL);
        long long probes[40];
        int np = 0;
        long long edges[] = {a, b, 0, a / 10, b / 10, a * 10, b * 10, -a, -b};
        for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
            for (int d = -2; d <= 2; d++) probes[np++ % 40] = edges[e] + d;
        for (int r = 0; r < 10; r++)
            probes[r] = a + (long long)(gt_rand(&rs) % (uint64_t)(b - a + 1));
        for (int k = 0; k < 40 && k < np; k++) {
            long long x = probes[k];
            bool in = kind == 0   ? (x >= a && x <= b)
                      : kind == 1 ? x >= a
                      : kind == 2 ? x <= b
                                  : (x > a && x < b);
            char txt[32];
            snprintf(txt, sizeof txt, "%lld", x);
            expect(g, schema, txt, in);
        }
        expect(g, schema, "-0", false); /* canonical: no negative zero, no leading zeros */
        dsr1_grammar_free(g);
    }
}

/* ---- number ranges against strtod ---- */

static void rand_decimal(uint64_t *rs, char *out, size_t n)
{
    int ip = (int)(gt_rand(rs) % 4), fp = (int)(gt_rand(rs) % 4);
    size_t k = 0;
    if (gt_rand(rs) % 3 == 0) out[k++] = '-';
    if (!ip) out[k++] = '0';
    for (int i = 0; i < ip; i++)
        out[k++] = (char)((i == 0 ? '1' : '0') + (int)(gt_rand(rs) % (i ? 10 : 9)));
    if (fp) {
        out[k++] = '.';
        for (int i = 0; i < fp; i++) out[k++] = (char)('0' + (int)(gt_rand(rs) % 10));
    }
    out[k] = '\0';
    (void)n;
}

static void test_number_ranges(void **state)
{
    (void)state;
    uint64_t rs = 0xdecaf00dull;
    for (int it = 0; it < 120; it++) {
        char a[32], b[32], schema[200];
        rand_decimal(&rs, a, sizeof a);
        rand_decimal(&rs, b, sizeof b);
        double da = strtod(a, NULL), db = strtod(b, NULL);
        if (da > db) {
            double t = da;
            da = db;
            db = t;
            char tmp[32];
            strcpy(tmp, a);
            strcpy(a, b);
            strcpy(b, tmp);
        }
        int kind = (int)(gt_rand(&rs) % 4);
        const char *lk = kind & 1 ? "exclusiveMinimum" : "minimum";
        const char *hk = kind & 2 ? "exclusiveMaximum" : "maximum";
        if (da == db && kind) continue; /* empty */
        snprintf(schema, sizeof schema, "{\"type\":\"number\",\"%s\":%s,\"%s\":%s}", lk, a, hk, b);
        dsr1_grammar *g = compile_opts(schema, NULL);
        for (int k = 0; k < 40; k++) {
            char x[32];
            if (k < 4)
                strcpy(x, k == 0 ? a : k == 1 ? b : k == 2 ? "0" : "1");
            else
                rand_decimal(&rs, x, sizeof x);
            if (!strcmp(x, "-0")) continue;
            if (x[0] == '-' && strtod(x, NULL) == 0) continue; /* "-0.00": not canonical */
            double dx = strtod(x, NULL);
            bool in = (kind & 1 ? dx > da : dx >= da) && (kind & 2 ? dx < db : dx <= db);
            expect(g, schema, x, in);
        }
        dsr1_grammar_free(g);
    }
}

/* ---- grammar text structure ---- */

static char *to_text(const char *schema, const dsr1_grammar_opts *o)
{
    char *text[1] = {NULL};
    size_t n;
    dsr1_status st = dsr1_json_schema_to_ebnf(schema, strlen(schema), o, text, &n);
    if (st) fprintf(stderr, "%s: %s\n", schema, dsr1_errmsg());
    assert_int_equal(st, DSR1_OK);
    return text[0];
}

static void test_text(void **state)
{
    (void)state;
    /* a recursive $ref target is one rule that refers to itself */
    char *t = to_text("{\"$defs\":{\"tree\":{\"type\":\"array\",\"items\":{\"$ref\":"
                      "\"#/$defs/tree\"}}},\"$ref\":\"#/$defs/tree\"}",
                      NULL);
    assert_non_null(strstr(t, "root ::="));
    char *def = strstr(t, "\ntree-");
    assert_non_null(def);
    char name[64];
    assert_int_equal(sscanf(def + 1, "%63s", name), 1);
    assert_non_null(strstr(strstr(def, "::="), name)); /* used in its own body */
    free(t);
    /* compact: no whitespace rule; with json_whitespace a bounded one */
    t = to_text("{\"type\":\"object\"}", NULL);
    assert_null(strstr(t, "ws"));
    assert_non_null(strstr(t, "root ::="));
    free(t);
    dsr1_grammar_opts ws = {.json_whitespace = true};
    t = to_text("{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}", &ws);
    char *w = strstr(t, "\nws ::= ");
    assert_non_null(w);
    assert_non_null(strstr(w, "{0,20}"));
    free(t);
    /* members in the order of `properties`, the key and colon as one literal */
    t = to_text("{\"type\":\"object\",\"properties\":{\"zeta\":{},\"alpha\":{}},"
                "\"required\":[\"zeta\",\"alpha\"],\"additionalProperties\":false}",
                NULL);
    char *z = strstr(t, "\"{\\\"zeta\\\":\""), *a = strstr(t, "\",\\\"alpha\\\":\"");
    assert_non_null(z);
    assert_non_null(a);
    assert_true(z < a);
    free(t);
    /* patterns become one regex terminal; formats too */
    t = to_text("{\"type\":\"string\",\"pattern\":\"^ab$\"}", NULL);
    assert_non_null(strstr(t, "/(?:ab)/"));
    free(t);
}

/* ---- the serialiser ---- */

static void expect_ser(const char *schema, const char *inst, const char *want)
{
    char *out;
    size_t n;
    assert_int_equal(dsr1_json_schema_serialize_instance(schema, schema ? strlen(schema) : 0, inst,
                                                         strlen(inst), &out, &n),
                     DSR1_OK);
    if (strcmp(out, want)) {
        fprintf(stderr, "serialise %s: got %s, want %s\n", inst, out, want);
        fail();
    }
    assert_int_equal(n, strlen(want));
    free(out);
}

static void test_serialise(void **state)
{
    (void)state;
    const char *s = "{\"properties\":{\"b\":{\"properties\":{\"y\":{},\"x\":{}}},\"a\":{}}}";
    expect_ser(s, "{\"c\":3, \"a\":1, \"b\":{\"x\":1,\"y\":2}}",
               "{\"b\":{\"y\":2,\"x\":1},\"a\":1,\"c\":3}");
    expect_ser(NULL, "[1.0, 1.5, 1e22, -0.0, 0.1, 100, -7, 1.5e-7, -2.5e20]",
               "[1,1.5,10000000000000000000000,0,0.1,100,-7,0.00000015,-250000000000000000000]");
    expect_ser(NULL, "\"a/b\\u0001\\\"\\\\\\n\xc3\xa9\"", "\"a/b\\u0001\\\"\\\\\\n\xc3\xa9\"");
    expect_ser("{\"const\":{\"y\":1,\"x\":2}}", "{\"x\":2,\"y\":1.0}", "{\"y\":1,\"x\":2}");
    expect_ser("{\"$defs\":{\"p\":{\"properties\":{\"q\":{},\"p\":{}}}},\"items\":{\"$ref\":"
               "\"#/$defs/p\"}}",
               "[{\"p\":1,\"q\":2}]", "[{\"q\":2,\"p\":1}]");
    expect_ser("{\"allOf\":[{\"properties\":{\"m\":{}}}],\"properties\":{\"n\":{}}}",
               "{\"m\":1,\"n\":2}", "{\"n\":2,\"m\":1}");
    char *out = NULL;
    size_t n;
    assert_int_equal(dsr1_json_schema_serialize_instance(NULL, 0, "[1,", 3, &out, &n),
                     DSR1_ERR_INVALID_ARG);
    assert_non_null(strstr(dsr1_errmsg(), "line 1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_languages),      cmocka_unit_test(test_strict_and_whitespace),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_limits),
        cmocka_unit_test(test_integer_ranges), cmocka_unit_test(test_number_ranges),
        cmocka_unit_test(test_text),           cmocka_unit_test(test_serialise),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

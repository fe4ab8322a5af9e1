#!/bin/sh
# Build and run the libFuzzer targets of the loader (safetensors reader, config.json parser).
#
#   tests/fuzz/run_loader_fuzz.sh [SECONDS]     # default 60 s per target
#
# Builds with clang (-fsanitize=fuzzer,address,undefined) straight from the sources into
# $DSR1_FUZZ_DIR (default build-fuzz-loader/ at the repo root), seeds each corpus with valid
# inputs, runs each target for SECONDS, and exits non-zero if either found a crash (the
# reproducer is left as crash-* in that directory). The corpora persist between runs.
set -eu

secs=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${DSR1_FUZZ_DIR:-$root/build-fuzz-loader}
cc=${CC_FUZZ:-clang}
mkdir -p "$out/corpus-safetensors" "$out/corpus-config"
cd "$root"

srcs="common/base/status.c common/base/log.c common/base/numeric.c common/model/safetensors.c
      common/model/model_config.c"
flags="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 -std=gnu11 -D_GNU_SOURCE -I common/base -I common/model"
for t in safetensors config; do
    # shellcheck disable=SC2086
    $cc $flags -o "$out/fuzz_$t" "tests/fuzz/fuzz_$t.c" $srcs -ljansson -lm
done

# u64 little-endian length, header, then DATA_LEN bytes of 0x5a: write_st FILE HEADER DATA_LEN
write_st() {
    n=$(printf '%s' "$2" | wc -c)
    {
        for i in 0 1 2 3 4 5 6 7; do
            # shellcheck disable=SC2059 # the format is the octal escape of one byte
            printf "\\$(printf '%03o' $(((n >> (8 * i)) & 255)))"
        done
        printf '%s' "$2"
        head -c "$3" /dev/zero | tr '\0' 'Z'
    } >"$1"
}
c=$out/corpus-safetensors
write_st "$c/seed-one" '{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}' 16
write_st "$c/seed-three" '{"__metadata__":{"format":"pt"},"w":{"dtype":"F8_E4M3","shape":[4,4],"data_offsets":[0,16]},"s":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"e":{"dtype":"I64","shape":[],"data_offsets":[22,30]}}' 30
write_st "$c/seed-empty" '{}' 0
cp tests/loader/tiny-a.json "$out/corpus-config/seed-tiny-a.json"

cat >"$out/safetensors.dict" <<'DICT'
"dtype"
"shape"
"data_offsets"
"__metadata__"
"F8_E4M3"
"F8_E5M2"
"BF16"
"F16"
"F32"
"I64"
"BOOL"
"\\u00e9"
"\xc3\xa9"
"\xed\xa0\x80"
DICT
cat >"$out/config.dict" <<'DICT'
"null"
"true"
"false"
"deepseek_v3"
"sigmoid"
"noaux_tc"
"yarn"
"rope_scaling"
"rope_type"
"quantization_config"
"weight_block_size"
"n_group"
"topk_group"
"n_routed_experts"
"num_experts_per_tok"
"q_lora_rank"
"2147483648"
"-1"
"1e300"
DICT

status=0
for t in safetensors config; do
    echo "== fuzz_$t for ${secs}s"
    "$out/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/crash-$t-" \
        -dict="$out/$t.dict" "$out/corpus-$t" >"$out/fuzz_$t.log" 2>&1 || status=1
    grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" \
        "$out/fuzz_$t.log" | tail -5
done
if [ "$status" -ne 0 ]; then
    echo "fuzzing found a crash: see $out/crash-* and $out/fuzz_*.log" >&2
fi
exit "$status"

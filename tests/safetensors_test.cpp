// Safetensors parsing: a valid file round-trips; every malformation is a one-line error that
// names the file.
#include <gtest/gtest.h>

#include <cstring>

#include "model/safetensors.h"
#include "test_util.h"

namespace lserve {
namespace {

std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string error_of(const std::string& bytes) {
  test::TempDir dir;
  auto path = dir.write("w.safetensors", bytes);
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("w.safetensors"), std::string::npos) << "message must name the file: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    return msg;
  }
  return "";
}

TEST(Safetensors, ReadsTensorsInPlace) {
  float values[6] = {1, 2, 3, 4, 5, 6};
  std::string data(reinterpret_cast<const char*>(values), sizeof values);
  data += std::string("\x01\x02", 2);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[24,26]}})";
  test::TempDir dir;
  SafetensorsFile f(dir.write("m.safetensors", make_file(header, data)));
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto& a = f.tensors().at("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (Shape{2, 3}));
  float got[6];
  std::memcpy(got, a.data, sizeof got);
  EXPECT_EQ(got[5], 6.0f);
  EXPECT_EQ(f.tensors().at("b").dtype, DType::BF16);
}

TEST(Safetensors, RejectsMalformedFiles) {
  EXPECT_NE(error_of("abc").find("too short"), std::string::npos);
  EXPECT_NE(error_of(make_file("{not json", "")).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(make_file("[1,2]", "")).find("not a JSON object"), std::string::npos);
  // Header length larger than the file.
  std::string huge(8, '\0');
  huge[0] = '\x7f';
  huge[1] = '\x7f';
  EXPECT_NE(error_of(huge + "{}").find("past the end"), std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "12345678"))
                .find("outside"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678"))
                .find("needs 12"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", "1")).find("unknown dtype"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
                               "1234"))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,4]}})", "1234")).find("bad shape"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"a":{"dtype":"U8","shape":[1]}})", "1")).find("data_offsets"), std::string::npos);
}

TEST(Safetensors, MissingFolderContentsAreNamed) {
  test::TempDir dir;
  try {
    WeightFiles::open(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors"), std::string::npos);
  }
  dir.write("model.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
  EXPECT_THROW(WeightFiles::open(dir.path()), Error);
}

}  // namespace
}  // namespace lserve

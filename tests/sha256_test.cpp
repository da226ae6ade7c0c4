// SHA-256 against the FIPS 180-4 / NIST test vectors and the system's sha256sum.

#include "ferry/io/sha256.h"
#include "io_test_util.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

using ferry::io::Sha256;
using ferry::io::sha256_hex;

TEST(IoSha256Test, NistVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 million;
  const std::string a(1000, 'a');
  for (int i = 0; i < 1000; ++i) million.update(a.data(), a.size());
  EXPECT_EQ(million.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(IoSha256Test, IncrementalEqualsOneShotAtEveryBoundary) {
  std::string data(300, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  for (size_t len : {0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 300}) {
    for (size_t cut : {size_t(0), len / 3, len / 2, len}) {
      Sha256 h;
      h.update(data.data(), cut);
      h.update(data.data() + cut, len - cut);
      EXPECT_EQ(h.hex_digest(), sha256_hex(data.data(), len)) << len << " " << cut;
    }
  }
}

TEST(IoSha256Test, MatchesSha256sumOfAFixtureShard) {
  const std::string path = ferry::test::data_dir() + "/tiny_llama/model-00001-of-00014.safetensors";
  const std::string bytes = ferry::test::read_bytes(path);
  FILE* pipe = ::popen(("sha256sum '" + path + "'").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char out[65] = {};
  ASSERT_EQ(std::fread(out, 1, 64, pipe), 64u);
  ::pclose(pipe);
  EXPECT_EQ(sha256_hex(bytes.data(), bytes.size()), std::string(out));
}

// StopStrings: streamed text cut at the first stop string, with nothing shown that belongs to one.
#include "ferry/tokenizers/stop_strings.h"
#include "ferry/tokenizers/tokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using ferry::tokenizers::StopStrings;

namespace {

// Pushes `chunks` one by one; returns what was shown, pushes and finish together.
std::string stream(StopStrings& stops, const std::vector<std::string>& chunks) {
  std::string shown;
  for (const auto& c : chunks) shown += stops.push(c);
  return shown + stops.finish();
}

}  // namespace

TEST(StopStrings, HoldsBackAPossibleStartAndCutsBeforeTheStop) {
  StopStrings stops({"\nUser:"});
  EXPECT_EQ(stops.push("Hello.\nUs"), "Hello.");
  EXPECT_FALSE(stops.stopped());
  EXPECT_EQ(stops.push("er: hi"), "");
  EXPECT_TRUE(stops.stopped());
  EXPECT_EQ(stops.matched(), "\nUser:");
  EXPECT_EQ(stops.push("more"), "") << "nothing after a stop";
  EXPECT_EQ(stops.finish(), "");
  EXPECT_EQ(stops.text(), "Hello.");
}

TEST(StopStrings, AFalseStartIsReleased) {
  StopStrings stops({"</end>"});
  EXPECT_EQ(stops.push("a </e"), "a ");
  EXPECT_EQ(stops.push("x>"), "</ex>");
  EXPECT_EQ(stream(stops, {" b </en"}), " b </en") << "held text comes out at the end";
  EXPECT_FALSE(stops.stopped());
}

TEST(StopStrings, EarliestOfSeveralWinsAndSplitsAnywhere) {
  const std::string text = "one two three four";
  // Every way of cutting the text into two chunks gives the same answer.
  for (size_t split = 0; split <= text.size(); ++split) {
    StopStrings stops({"four", "two t", "xyz"});
    EXPECT_EQ(stream(stops, {text.substr(0, split), text.substr(split)}), "one ") << split;
    EXPECT_EQ(stops.matched(), "two t") << split;
  }
  StopStrings none;
  EXPECT_EQ(stream(none, {"a", "b"}), "ab");
  EXPECT_EQ(StopStrings({"two", "one t"}).cut(text), "") << "cut: the same rule on a whole text";
  EXPECT_EQ(StopStrings({"nine"}).cut(text), text);
}

TEST(StopStrings, MultibyteCharactersStayWhole) {
  StopStrings stops({"🌍!"});
  std::string shown = stops.push("héllo 🌍");  // the emoji could start the stop string: held
  EXPECT_EQ(shown, "héllo ");
  EXPECT_EQ(stops.push("?"), "🌍?");
  EXPECT_EQ(stops.push(" 🌍!"), " ");
  EXPECT_TRUE(stops.stopped());
}

// Byte tokens that never form a character: the stream goes on instead of failing (a whole decode
// shows every byte of the run as U+FFFD, even one already shown).
TEST(StreamDecoder, ByteRunsThatNeverFormACharacterDoNotStopTheStream) {
  auto tok = ferry::tokenizers::Tokenizer::from_file(std::string(FERRY_TEST_DATA_DIR) + "/tokenizers/llama2.tokenizer.json");
  const std::vector<int64_t> ids{433, 424, 270, 515, 4, 208, 30, 492, 338};  // ... <0x01> <0xCD> <0x1B> t's an
  ferry::tokenizers::StreamDecoder stream(tok);
  std::string shown;
  for (int64_t id : ids) shown += stream.push(id);
  shown += stream.finish();
  EXPECT_EQ(shown, "45's3 8\x01\xEF\xBF\xBD\xEF\xBF\xBDt'san") << "\\x01 as shown, then <0xCD> <0x1B> decoded on their own";
  EXPECT_EQ(tok.decode(ids), "45's3 8\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDt'san");
}

// Stop strings: never leak a partial stop string, cut exactly before the match.
#include <gtest/gtest.h>

#include "engine/stop_matcher.h"

namespace lserve {
namespace {

TEST(StopMatcher, HoldsBackPossiblePrefixes) {
  StopMatcher m({"END"});
  auto r = m.push("hello E");
  EXPECT_EQ(r.text, "hello ");
  EXPECT_FALSE(r.stopped);
  r = m.push("N");
  EXPECT_EQ(r.text, "");
  r = m.push("X more");
  EXPECT_EQ(r.text, "ENX more");  // not a stop after all: released
  r = m.push(" and EN");
  EXPECT_EQ(r.text, " and ");
  r = m.push("D tail");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
  EXPECT_EQ(m.push("x").text, "");  // nothing after a stop
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, EarliestOfSeveralWins) {
  StopMatcher m({"world", "lo w"});
  auto r = m.push("hello world");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "hel");
}

TEST(StopMatcher, NoStopsPassThroughAndFlushReleases) {
  StopMatcher none({});
  EXPECT_EQ(none.push("abc").text, "abc");
  StopMatcher m({"xyz"});
  EXPECT_EQ(m.push("abcx").text, "abc");
  EXPECT_EQ(m.flush(), "x");
}

}  // namespace
}  // namespace lserve

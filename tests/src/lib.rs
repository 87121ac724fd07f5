//! End-to-end tests of Berth against real peers; the tests live in tests/.

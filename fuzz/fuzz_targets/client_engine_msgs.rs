//! Every control frame that crosses the client ↔ engine connection. Input: the frame kind's
//! wire byte, then its body. Decoding must not panic or allocate past the protocol's limits,
//! and whatever decodes must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| dfs_fuzz::fuzz_msg(&dfs_fuzz::kinds::client_engine(), bytes));

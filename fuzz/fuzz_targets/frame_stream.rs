//! Any byte stream, read frame by frame as a server reads a connection: the reader must return
//! frames or an error, never panic, and never allocate beyond the protocol's limits (a Data
//! body is read into a buffer sized from a header the parser has already bounded).
#![no_main]

use dfs_proto::io_std::{read_data, read_frame, Frame};
use dfs_proto::limits::MAX_DATA_FRAME_BYTES;
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|bytes: &[u8]| {
    let mut stream = Cursor::new(bytes);
    loop {
        match read_frame(&mut stream) {
            Ok(Frame::Msg(msg)) => {
                // A decoded message is one the protocol allows: it must encode again.
                let _ = msg.encode();
            }
            Ok(Frame::Data(len)) => {
                assert!(len <= MAX_DATA_FRAME_BYTES, "a data header over the limit was accepted");
                let mut body = vec![0u8; len as usize];
                if read_data(&mut stream, &mut body).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
});

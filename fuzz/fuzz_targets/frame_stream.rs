//! Any byte stream, read frame by frame as a peer's connection is read: headers of every kind
//! (known or not), control bodies, and Data bodies read into a buffer of one block. The reader
//! must return frames or an error, never panic, never allocate past the protocol's limits, and
//! every control frame it returns must be the exact bytes it consumed.
#![no_main]

use dfs_fuzz::bounded;
use dfs_proto::io_std::{read_data, read_frame, Frame};
use dfs_proto::limits::MAX_DATA_FRAME_BYTES;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::io::Cursor;

thread_local! {
    /// The receiver's block buffer, allocated once rather than per input.
    static BLOCK: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATA_FRAME_BYTES as usize]);
}

fuzz_target!(|bytes: &[u8]| {
    BLOCK.with_borrow_mut(|block| {
        let mut stream = Cursor::new(bytes);
        loop {
            let start = stream.position() as usize;
            match bounded("read_frame", || read_frame(&mut stream)) {
                Ok(Frame::Msg(msg)) => {
                    let frame = &bytes[start..stream.position() as usize];
                    assert_eq!(
                        msg.encode(),
                        frame,
                        "a {} frame does not encode back to the same bytes",
                        msg.kind().name()
                    );
                }
                Ok(Frame::Data(len)) => {
                    assert!(len <= MAX_DATA_FRAME_BYTES, "a Data header of {len} bytes was accepted");
                    if read_data(&mut stream, &mut block[..len as usize]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
});

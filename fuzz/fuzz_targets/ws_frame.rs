//! What a bubble-server reads first from every connection: WebSocket frames (peerbubble-ws). Decoding must
//! never panic, must not depend on where reads cut the bytes (all at once and cut in three give the same
//! messages and the same error), and must hold nothing once the input ends on a frame boundary.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use peerbubble_ws::{Decoder, Error, Frame};

fn decode(data: &[u8], cuts: [usize; 2]) -> (Vec<String>, Result<(), Error>, bool) {
    let mut decoder = Decoder::new(4096);
    let mut got = Vec::new();
    let mut bounds = [cuts[0] % (data.len() + 1), cuts[1] % (data.len() + 1), data.len()];
    bounds.sort_unstable();
    let mut at = 0;
    for end in bounds {
        let mut piece = data[at..end].to_vec();
        at = end;
        let result = decoder.decode(&mut piece, |frame| {
            got.push(match frame {
                Frame::Text(t) => format!("text {t}"),
                Frame::Binary(b) => format!("binary {b:?}"),
                Frame::Ping(b) => format!("ping {b:?}"),
                Frame::Pong(b) => format!("pong {b:?}"),
                Frame::Close(c) => format!("close {c:?}"),
            });
            ControlFlow::Continue(())
        });
        if let Err(e) = result {
            return (got, Err(e), decoder.is_idle());
        }
    }
    (got, Ok(()), decoder.is_idle())
}

fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], data)) = data.split_first_chunk::<2>() else { return };
    let whole = decode(data, [0, 0]);
    let cut = decode(data, [usize::from(a) * 7, usize::from(b) * 13]);
    assert_eq!(whole.0, cut.0);
    assert_eq!(whole.1, cut.1);
    // A failed decoder holds nothing.
    assert!(whole.1.is_ok() || whole.2);
});

//! The serial frame decoder on arbitrary bytes, split at an arbitrary point: it must never
//! panic, never hold more than `max_frame_bytes`, and decode the same frames however the bytes
//! are split.
#![no_main]

use std::sync::Arc;

use edgehook::source::serial::frame::{Format, FrameDecoder};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 128;

fn decoders() -> [FrameDecoder; 2] {
    let metadata: Arc<[String]> = Arc::from(vec!["seq".to_string()]);
    [
        FrameDecoder::new(
            Format::Text {
                sentences: [(
                    "OCC".to_string(),
                    vec!["presence".into(), "temperature".into(), "seq".into()],
                )]
                .into(),
            },
            metadata.clone(),
            MAX,
        ),
        FrameDecoder::new(
            Format::JsonLines {
                device_field: "device".into(),
            },
            metadata,
            MAX,
        ),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let split = split as usize % (bytes.len() + 1);
    for (mut whole, mut parts) in decoders().into_iter().zip(decoders()) {
        let mut a = Vec::new();
        whole.push(bytes, &mut a);
        let mut b = Vec::new();
        parts.push(&bytes[..split], &mut b);
        parts.push(&bytes[split..], &mut b);
        assert_eq!(a, b, "split at {split}");
    }
});

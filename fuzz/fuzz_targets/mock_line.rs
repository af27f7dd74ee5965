//! A line of the mock source's JSONL message file, and the same document sent to the admin
//! server's `POST /send`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qt_adapter_mock::MessageLine;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(Some(line)) = MessageLine::parse(text, 1)
    {
        let _ = line.into_raw("queue");
    }
    if let Ok(line) = serde_json::from_slice::<MessageLine>(data) {
        let _ = line.into_checked_raw("queue");
    }
});

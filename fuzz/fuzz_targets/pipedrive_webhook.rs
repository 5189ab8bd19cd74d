#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callside::fuzzing::pipedrive_webhook(data));

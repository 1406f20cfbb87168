#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qkv::fuzzing::log_recovery(data));

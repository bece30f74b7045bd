#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::entries::member_inputs(data));

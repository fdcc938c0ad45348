//! `sagashop_fuzzing::saga_spec`: see that function for the property.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sagashop_fuzzing::saga_spec(data));

//! Protocol detection on arbitrary first bytes: every prefix of the input is
//! classified (as bytes arrive one read at a time), and must never panic; once a
//! prefix is classified, every longer one must agree.
#![no_main]

use weft_proxy::detect::classify;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut first = None;
    for end in 0..=data.len() {
        let protocol = classify(&data[..end]);
        match (&first, protocol) {
            (None, Some(protocol)) => first = Some(protocol),
            (Some(first), Some(protocol)) => assert_eq!(*first, protocol),
            (Some(first), None) => panic!("{first:?} became undecided"),
            (None, None) => {}
        }
    }
});

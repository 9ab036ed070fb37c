//! Issue 14, item 7: lock files from anywhere (a hand edit, a bad merge, a peer's
//! apply) are read without panic: random bytes, and a real lock with a span replaced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

fn fuzz_cases(default: u32) -> u32 {
    std::env::var("QUORATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn real_lock() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/homelab/quorate.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let spec = quorate_spec::check(&text, quorate_spec::Format::Toml)
        .spec
        .unwrap();
    quorate_lock::allocate(None, &spec).unwrap().lock.to_json()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: fuzz_cases(500), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = quorate_lock::Lock::from_json(&text, "fuzz.lock");
    }

    #[test]
    fn a_mutated_real_lock_is_read_or_refused_without_panic(
        at in any::<prop::sample::Index>(),
        len in 0_usize..24,
        with in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut bytes = real_lock().into_bytes();
        let start = at.index(bytes.len());
        let end = (start + len).min(bytes.len());
        bytes.splice(start..end, with);
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = quorate_lock::Lock::from_json(&text, "fuzz.lock") {
            // Refusals name the file.
            prop_assert!(e.to_string().contains("fuzz.lock"), "{e}");
        }
    }
}

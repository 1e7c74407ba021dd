//! What every target shares: caught panics reported once per site instead of
//! aborting.
//!
//! libfuzzer-sys's panic hook aborts on every panic, also one the runtime
//! catches on purpose (`guard` turns a panic inside tract or ort into
//! `RuntimeError::Panic`, which is an error value, not a crash). This hook
//! prints each caught site once, so the fuzzer goes on; a panic that escapes
//! the target still aborts (libfuzzer-sys aborts when its `catch_unwind` sees one).

use std::collections::HashSet;
use std::sync::{Mutex, Once};

pub fn report_panics_once_per_site() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let seen = Mutex::new(HashSet::new());
        std::panic::set_hook(Box::new(move |info| {
            let site = info
                .location()
                .map_or_else(|| "?".to_string(), |l| format!("{}:{}", l.file(), l.line()));
            let new = seen
                .lock()
                .map(|mut s| s.insert(site.clone()))
                .unwrap_or(false);
            if new {
                eprintln!("PANIC SITE {site}: {info}");
            }
        }));
    });
}

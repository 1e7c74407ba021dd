//! The committed C header is what cbindgen makes of src/ffi.rs (and
//! src/ffi/options.rs) today.

use std::path::PathBuf;

#[test]
fn header_is_current() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("ffi.rs"))
        .with_src(root.join("src").join("ffi").join("options.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = root.join("include").join("unet_runtime.h");
    if std::env::var_os("UNET_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write header");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale; regenerate with UNET_BLESS=1 cargo test -p unet-runtime --test it header",
        path.display()
    );
}

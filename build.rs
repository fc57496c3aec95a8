//! No build step of its own: this script exists so that `[build-dependencies]` in Cargo.toml can
//! pin the features of crates that build scripts and proc-macros share (see the feature
//! unification note there), keeping the release build and the test build identical.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
}

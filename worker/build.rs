//! Rebuilds the worker when a file under `templates/` is added or removed (the templates are
//! compiled into the binary, `src/render/mod.rs`); edits to existing files are tracked by the
//! embedding itself.

fn main() {
    println!("cargo::rerun-if-changed=../templates");
}

//! Link settings for libtorch that `torch-sys` does not make on its own.
//!
//! rustc links with `--as-needed`, and nothing in our code references a symbol of
//! `libtorch_cuda` directly, so the linker silently drops it and CUDA is never registered:
//! `Cuda::is_available()` is then false even on a GPU machine. Wrapping the library in
//! `--no-as-needed` keeps it. An rpath to the build machine's libtorch lets the binary run
//! there without `LD_LIBRARY_PATH`; elsewhere (the GPU machine) `LD_LIBRARY_PATH` wins,
//! because the linker writes a RUNPATH, which is searched after it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

//! Link settings for libtorch that `torch-sys` does not make on its own.
//!
//! rustc links with `--as-needed`, and nothing in our code references a symbol of
//! `libtorch_cuda` directly, so the linker silently drops it and CUDA is never registered:
//! `Cuda::is_available()` is then false even on a GPU machine. Wrapping the library in
//! `--no-as-needed` keeps it. An rpath to the build machine's libtorch lets the binary run
//! there without `LD_LIBRARY_PATH`; elsewhere (the GPU machine) `LD_LIBRARY_PATH` wins,
//! because the linker writes a RUNPATH, which is searched after it.
//!
//! It also compiles `src/ffi/autocast.cpp`, two libtorch calls that tch does not expose, and
//! `src/ffi/determinism.cpp`, cuDNN's deterministic switch.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    compile_shim(&lib);
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// Compiles the C++ shim against the headers that sit beside libtorch's `lib/` folder.
fn compile_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/ffi/autocast.cpp");
    println!("cargo:rerun-if-changed=src/ffi/determinism.cpp");
    let include = lib.parent().expect("libtorch lib folder has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/ffi/autocast.cpp")
        .file("src/ffi/determinism.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag_if_supported("-Wno-deprecated-declarations")
        .flag_if_supported("-Wno-unused-parameter")
        // PyTorch wheels are built with the C++11 ABI since torch 2.7.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("magsd_shim");
}

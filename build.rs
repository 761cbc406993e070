//! Link settings for libtorch that `torch-sys` does not make on its own.
//!
//! rustc links with `--as-needed`, and nothing in our code references a symbol of
//! `libtorch_cuda` directly, so the linker silently drops it and CUDA is never registered:
//! `Cuda::is_available()` is then false even on a GPU machine. Wrapping the library in
//! `--no-as-needed` keeps it. An rpath to the build machine's libtorch lets the binary run
//! there without `LD_LIBRARY_PATH`; elsewhere (the GPU machine) `LD_LIBRARY_PATH` wins,
//! because the linker writes a RUNPATH, which is searched after it.
//!
//! It also compiles the C++ shim in `src/ffi/` (autocast, cuDNN's deterministic switch, the
//! multi-tensor SGD update, CUDA graphs): libtorch calls that tch does not expose.
//!
//! And it sets `MAGSD_GIT_COMMIT` to the git commit checked out when the binary is built
//! (uncommitted changes are not marked), or "unknown" outside a git checkout or without git.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    embed_git_commit();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    compile_shim(&lib);
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-lc10_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

/// `MAGSD_GIT_COMMIT` for the reproduce tables' provenance. The build reruns when HEAD moves:
/// its file, the branch's ref file and `packed-refs` (in a worktree they sit in two git folders).
fn embed_git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    let commit = git(&["rev-parse", "--verify", "HEAD"]).filter(|c| c.len() == 40 && c.chars().all(|c| c.is_ascii_hexdigit()));
    if commit.is_some() {
        let git_dir = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from);
        let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        let mut watch = Vec::new();
        if let Some(d) = &git_dir {
            watch.push(d.join("HEAD"));
        }
        if let Some(c) = common.or(git_dir) {
            watch.push(c.join("packed-refs"));
            if let Some(b) = &branch {
                watch.push(c.join(b));
            }
        }
        // A path that does not exist would make every build rerun this script.
        for p in watch.iter().filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rustc-env=MAGSD_GIT_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}

/// `site-packages/nvidia/*/include` holding the CUDA runtime headers with their `crt/` part
/// (PyPI's `nvidia-cuda-crt`, installed by scripts/install-torch.sh), next to
/// `site-packages/torch/lib`.
fn cuda_include(lib: &std::path::Path) -> Option<PathBuf> {
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    std::fs::read_dir(nvidia).ok()?.flatten().map(|e| e.path().join("include")).find(|i| i.join("cuda_runtime_api.h").exists() && i.join("crt/host_config.h").exists())
}

/// Compiles the C++ shim against the headers that sit beside libtorch's `lib/` folder.
fn compile_shim(lib: &std::path::Path) {
    const SHIM: &[&str] =
        &["src/ffi/autocast.cpp", "src/ffi/determinism.cpp", "src/ffi/optim.cpp", "src/ffi/cuda_graph.cpp"];
    for f in SHIM {
        println!("cargo:rerun-if-changed={f}");
    }
    let include = lib.parent().expect("libtorch lib folder has a parent").join("include");
    let mut build = cc::Build::new();
    // The CUDA graph shim needs the CUDA runtime headers, which PyPI's torch brings as
    // `site-packages/nvidia/<cuda>/include`; without them it is built as a stub.
    match cuda_include(lib) {
        Some(dir) => {
            build.include(dir);
        }
        None => {
            build.define("MAGSD_NO_CUDA_GRAPH", None);
        }
    }
    build
        .cpp(true)
        .files(SHIM)
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

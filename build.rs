//! Build script: give the binaries an rpath to the libtorch they were built against, so they run
//! without LD_LIBRARY_PATH, and link the C++ runtime that the static ALE library needs.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // Exposed to the program so it can dlopen libtorch_cuda.so from the same directory.
        println!("cargo:rustc-env=ASYNC_RL_LIBTORCH_LIB={}", lib.display());
    }
    // ale-sys builds ALE as a static C++ library but does not link the C++ runtime.
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

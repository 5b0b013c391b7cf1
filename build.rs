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
    actor_link_service();
    // ale-sys builds ALE as a static C++ library but does not link the C++ runtime.
    println!("cargo:rustc-link-lib=dylib=stdc++");
}

/// The gRPC service between a learner and its remote actor hosts (`src/remote`): one
/// bidirectional stream per host session. The messages are prost structs written in
/// `src/remote/wire.rs` (no .proto file, so no protoc); tonic-build generates the client and
/// server stubs.
fn actor_link_service() {
    use tonic_build::manual::{Builder, Method, Service};
    let service = Service::builder()
        .name("ActorLink")
        .package("async_rl.v1")
        .method(
            Method::builder()
                .name("session")
                .route_name("Session")
                .input_type("crate::remote::wire::Up")
                .output_type("crate::remote::wire::Down")
                .codec_path("tonic_prost::ProstCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[service]);
}

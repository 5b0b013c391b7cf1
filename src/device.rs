//! Choosing the learner's device, and loading libtorch's CUDA library at run time.
//!
//! The linker drops `libtorch_cuda.so` (`--as-needed`: nothing references it directly), so
//! `tch::Cuda::is_available()` says false even on a GPU machine. Linking it for good would break
//! CPU-only machines, so it is `dlopen`ed with `RTLD_GLOBAL` before any tensor work, which lets
//! libtorch register its CUDA backend.

use std::ffi::{CStr, CString};

use tch::Device;

use crate::config::DeviceChoice;

/// Why CUDA is not usable (for `--device auto`'s log line and `--device cuda`'s error).
#[derive(Debug, thiserror::Error)]
#[error("--device cuda: CUDA is not usable: {0}")]
pub struct CudaUnavailable(pub String);

/// Loads `libtorch_cuda.so` once per process with `RTLD_NOW | RTLD_GLOBAL`: first by name (the
/// binaries' rpath and LD_LIBRARY_PATH), then from the libtorch the binary was built against.
/// Memoised: later calls return the first call's result.
pub fn load_cuda() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED.get_or_init(dlopen_cuda).clone()
}

fn dlopen_cuda() -> Result<(), String> {
    let mut candidates = vec!["libtorch_cuda.so".to_string()];
    if let Some(dir) = option_env!("ASYNC_RL_LIBTORCH_LIB") {
        candidates.push(format!("{dir}/libtorch_cuda.so"));
    }
    let mut errors = Vec::new();
    for name in candidates {
        let c = CString::new(name.clone()).expect("no NUL in library path");
        // SAFETY: dlopen with a valid NUL-terminated path; the handle is deliberately never
        // closed, since libtorch keeps using the library for the life of the process.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return Ok(());
        }
        // SAFETY: dlerror returns a thread-local C string (or null) valid until the next dl call.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
            unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        errors.push(format!("{name}: {msg}"));
    }
    Err(errors.join("; "))
}

/// Whether the NVIDIA driver's user-space library, `libcuda.so.1`, can be loaded.
fn driver_present() -> bool {
    let c = CString::new("libcuda.so.1").expect("no NUL");
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is kept (libtorch would load
    // the same library anyway) and never closed.
    !unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null()
}

/// Resolves `--device`: `cpu` is the CPU; `cuda` is CUDA device 0 or an error; `auto` is CUDA
/// when usable, else the CPU with the reason returned for logging. Call before any tensor work.
pub fn select(choice: DeviceChoice) -> Result<(Device, Option<String>), CudaUnavailable> {
    if choice == DeviceChoice::Cpu {
        return Ok((Device::Cpu, None));
    }
    let reason = match load_cuda() {
        Ok(()) if tch::Cuda::is_available() => return Ok((Device::Cuda(0), None)),
        Ok(()) if !driver_present() => {
            "libtorch_cuda loaded, but there is no NVIDIA driver (libcuda.so.1 not found)"
                .to_string()
        }
        Ok(()) => "libtorch_cuda loaded, but no CUDA device is visible".to_string(),
        Err(e) => format!("cannot load libtorch_cuda: {e}"),
    };
    match choice {
        DeviceChoice::Cuda => Err(CudaUnavailable(reason)),
        _ => Ok((Device::Cpu, Some(reason))),
    }
}

/// A short human name: "cpu" or "cuda:0 (NVIDIA H100 ...)".
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

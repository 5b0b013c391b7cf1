//! Choosing the learner's device, and loading libtorch's CUDA library at run time.
//!
//! The linker drops `libtorch_cuda.so` (`--as-needed`: nothing references it directly), so
//! `tch::Cuda::is_available()` says false even on a GPU machine. Linking it for good would break
//! CPU-only machines, so it is `dlopen`ed with `RTLD_GLOBAL` before any tensor work, which lets
//! libtorch register its CUDA backend.

use std::ffi::{CStr, CString};

use tch::Device;

use serde::{Deserialize, Serialize};

/// Where the learner's network lives (`auto`, `cpu`, `cuda` or `cuda:N`). Actors always run
/// on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch_cuda loads and a GPU is usable, else the CPU.
    Auto,
    Cpu,
    /// CUDA device N (`cuda` is device 0) or an error: never falls back silently.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| {
                    format!(
                        "`{s}`: expected auto, cpu, cuda or cuda:N (N = 0, 1, ...: a GPU's index)"
                    )
                }),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// Why the CUDA device asked for is not usable (`--device cuda` or `cuda:N`).
#[derive(Debug, thiserror::Error)]
#[error("--device {choice}: CUDA is not usable: {reason}")]
pub struct CudaUnavailable {
    pub choice: DeviceChoice,
    pub reason: String,
}

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

/// Resolves `--device`: `cpu` is the CPU; `cuda:N` (`cuda`: 0) is CUDA device N or an error
/// (no CUDA, or no GPU of that index); `auto` is CUDA device 0 when usable, else the CPU with
/// the reason returned for logging. Call before any tensor work.
pub fn select(choice: DeviceChoice) -> Result<(Device, Option<String>), CudaUnavailable> {
    if choice == DeviceChoice::Cpu {
        return Ok((Device::Cpu, None));
    }
    let index = match choice {
        DeviceChoice::Cuda(i) => i,
        _ => 0,
    };
    let reason = match load_cuda() {
        Ok(()) if tch::Cuda::is_available() => {
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            return check_index(index, count)
                .map(|()| (Device::Cuda(index), None))
                .map_err(|reason| CudaUnavailable { choice, reason });
        }
        Ok(()) if !driver_present() => {
            "libtorch_cuda loaded, but there is no NVIDIA driver (libcuda.so.1 not found)"
                .to_string()
        }
        Ok(()) => "libtorch_cuda loaded, but no CUDA device is visible".to_string(),
        Err(e) => format!("cannot load libtorch_cuda: {e}"),
    };
    match choice {
        DeviceChoice::Cuda(_) => Err(CudaUnavailable { choice, reason }),
        _ => Ok((Device::Cpu, Some(reason))),
    }
}

/// Whether GPU `index` exists among `count` visible ones; the error says which do.
pub fn check_index(index: usize, count: usize) -> Result<(), String> {
    if index < count {
        return Ok(());
    }
    Err(match count {
        0 => "no CUDA device is visible".to_string(),
        1 => format!("there is no GPU {index}: this machine has one, cuda:0 (or cuda)"),
        n => format!(
            "there is no GPU {index}: this machine has {n}, cuda:0 to cuda:{}",
            n - 1
        ),
    })
}

/// A short human name: "cpu" or "cuda:0 (NVIDIA H100 ...)".
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse_print_and_refuse_by_name() {
        for (text, want) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(want), "{text}");
            // Printed back as it parses (TOML files and checkpoints store the text).
            assert_eq!(want.to_string().parse::<DeviceChoice>(), Ok(want));
        }
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", "CUDA", "cuda:1:2"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(
                err.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_gpu_index_that_does_not_exist_is_refused_naming_those_that_do() {
        assert_eq!(check_index(0, 1), Ok(()));
        assert_eq!(check_index(1, 2), Ok(()));
        let one = check_index(1, 1).unwrap_err();
        assert!(
            one.contains("there is no GPU 1: this machine has one, cuda:0"),
            "{one}"
        );
        let two = check_index(5, 2).unwrap_err();
        assert!(two.contains("cuda:0 to cuda:1"), "{two}");
        assert_eq!(check_index(0, 0).unwrap_err(), "no CUDA device is visible");
    }
}

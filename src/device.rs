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
    /// The CPU.
    Cpu,
    /// CUDA device N (`cuda` is device 0) or an error: never falls back silently.
    Cuda(usize),
}

/// A `--device` value that is not `auto`, `cpu`, `cuda` or `cuda:N`; holds the text given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: expected auto, cpu, cuda or cuda:N (N = 0, 1, ...: a GPU's index)")]
pub struct BadDeviceChoice(pub String);

impl std::str::FromStr for DeviceChoice {
    type Err = BadDeviceChoice;

    fn from_str(s: &str) -> Result<Self, BadDeviceChoice> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| BadDeviceChoice(s.to_string())),
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
    type Error = BadDeviceChoice;

    fn try_from(s: String) -> Result<Self, BadDeviceChoice> {
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
    /// The `--device` asked for.
    pub choice: DeviceChoice,
    /// Why it is not usable.
    pub reason: CudaReason,
}

/// Why CUDA, or the GPU asked for, is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaReason {
    /// `libtorch_cuda.so` did not load.
    #[error("cannot load libtorch_cuda: {0}")]
    NoLibrary(CudaLoadError),
    /// libtorch_cuda loaded, but the NVIDIA driver's `libcuda.so.1` is not there.
    #[error("libtorch_cuda loaded, but there is no NVIDIA driver (libcuda.so.1 not found)")]
    NoDriver,
    /// libtorch_cuda and the driver loaded, but libtorch sees no GPU.
    #[error("libtorch_cuda loaded, but no CUDA device is visible")]
    NoDevice,
    /// The GPU index asked for is not among those visible.
    #[error(transparent)]
    NoSuchGpu(#[from] NoSuchGpu),
}

/// Why `libtorch_cuda.so` could not be loaded: each path tried, with `dlerror`'s message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .attempts.iter().map(|(path, msg)| format!("{path}: {msg}")).collect::<Vec<_>>().join("; "))]
pub struct CudaLoadError {
    /// (library path tried, why it did not load), in the order tried.
    pub attempts: Vec<(String, String)>,
}

/// A GPU index that is not among the `count` visible GPUs (see [`check_index`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSuchGpu {
    /// No GPU is visible at all.
    #[error("no CUDA device is visible")]
    NoneVisible,
    /// GPU `index` was asked for; `count` (at least one) are visible.
    #[error("there is no GPU {index}: this machine has {}", visible(*.count))]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// How many GPUs are visible.
        count: usize,
    },
}

/// "one, cuda:0 (or cuda)" or "N, cuda:0 to cuda:N-1".
fn visible(count: usize) -> String {
    match count {
        1 => "one, cuda:0 (or cuda)".to_string(),
        n => format!("{n}, cuda:0 to cuda:{}", n - 1),
    }
}

/// Loads `libtorch_cuda.so` once per process with `RTLD_NOW | RTLD_GLOBAL`: first by name (the
/// binaries' rpath and LD_LIBRARY_PATH), then from the libtorch the binary was built against.
/// Memoised: later calls return the first call's result.
///
/// # Errors
///
/// [`CudaLoadError`], naming each path tried and why it did not load.
pub fn load_cuda() -> Result<(), CudaLoadError> {
    static LOADED: std::sync::OnceLock<Result<(), CudaLoadError>> = std::sync::OnceLock::new();
    LOADED.get_or_init(dlopen_cuda).clone()
}

fn dlopen_cuda() -> Result<(), CudaLoadError> {
    let mut candidates = vec!["libtorch_cuda.so".to_string()];
    if let Some(dir) = option_env!("ASYNC_RL_LIBTORCH_LIB") {
        candidates.push(format!("{dir}/libtorch_cuda.so"));
    }
    let mut attempts = Vec::new();
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
        attempts.push((name, msg));
    }
    Err(CudaLoadError { attempts })
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
///
/// # Errors
///
/// [`CudaUnavailable`] when `cuda` or `cuda:N` was asked for and is not usable.
pub fn select(choice: DeviceChoice) -> Result<(Device, Option<CudaReason>), CudaUnavailable> {
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
                .map_err(|e| CudaUnavailable {
                    choice,
                    reason: e.into(),
                });
        }
        Ok(()) if !driver_present() => CudaReason::NoDriver,
        Ok(()) => CudaReason::NoDevice,
        Err(e) => CudaReason::NoLibrary(e),
    };
    match choice {
        DeviceChoice::Cuda(_) => Err(CudaUnavailable { choice, reason }),
        _ => Ok((Device::Cpu, Some(reason))),
    }
}

/// Whether GPU `index` exists among `count` visible ones.
///
/// # Errors
///
/// [`NoSuchGpu`], whose message says which GPUs do exist.
pub fn check_index(index: usize, count: usize) -> Result<(), NoSuchGpu> {
    match count {
        _ if index < count => Ok(()),
        0 => Err(NoSuchGpu::NoneVisible),
        _ => Err(NoSuchGpu::OutOfRange { index, count }),
    }
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
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
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
        let one = check_index(1, 1).unwrap_err().to_string();
        assert!(
            one.contains("there is no GPU 1: this machine has one, cuda:0"),
            "{one}"
        );
        let two = check_index(5, 2).unwrap_err().to_string();
        assert!(two.contains("cuda:0 to cuda:1"), "{two}");
        assert_eq!(
            check_index(1, 1),
            Err(NoSuchGpu::OutOfRange { index: 1, count: 1 })
        );
        assert_eq!(check_index(0, 0), Err(NoSuchGpu::NoneVisible));
        assert_eq!(
            check_index(0, 0).unwrap_err().to_string(),
            "no CUDA device is visible"
        );
    }
}

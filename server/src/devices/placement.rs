//! Which device a run asks for, which one it gets, and the slots the scheduler hands out:
//! one run per GPU, and up to `--max-concurrent-runs` runs on the CPU.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `device` of a create-run request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// A GPU if the server has any (waiting for a free one), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// Whichever GPU is free first.
    AnyGpu,
    /// This GPU (nvidia-smi's index).
    Gpu(u32),
}

/// Where a run's trainer runs: the value of its `--device` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

const EXPECTED: &str = r#"expected "auto", "cpu", "gpu" or "cuda:N" (N a GPU index)"#;

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "gpu" => Ok(DeviceRequest::AnyGpu),
            _ => match s.parse::<Device>() {
                Ok(Device::Cuda(n)) => Ok(DeviceRequest::Gpu(n)),
                _ => Err(format!("unknown device {s:?}; {EXPECTED}")),
            },
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Cpu => f.write_str("cpu"),
            DeviceRequest::AnyGpu => f.write_str("gpu"),
            DeviceRequest::Gpu(n) => Device::Cuda(*n).fmt(f),
        }
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cpu" {
            return Ok(Device::Cpu);
        }
        s.strip_prefix("cuda:")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device {s:?}; expected \"cpu\" or \"cuda:N\""))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Both travel as their text form ("cuda:1"), in the API and in the database.
macro_rules! as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
as_text!(DeviceRequest);
as_text!(Device);

/// Checks a request against the GPUs the server has (`gpus`: their indices) when a run is
/// created, so an impossible request is refused at once instead of waiting forever.
/// `why_none` says why no GPU is listed (e.g. nvidia-smi's error), if known.
pub fn check(request: DeviceRequest, gpus: &[u32], why_none: Option<&str>) -> Result<(), String> {
    let none = || {
        let why = why_none.map(|w| format!(" ({w})")).unwrap_or_default();
        format!(r#""{request}" needs a GPU, but no GPU was detected on this server{why}; use "cpu" or "auto""#)
    };
    match request {
        DeviceRequest::Auto | DeviceRequest::Cpu => Ok(()),
        DeviceRequest::AnyGpu | DeviceRequest::Gpu(_) if gpus.is_empty() => Err(none()),
        DeviceRequest::AnyGpu => Ok(()),
        DeviceRequest::Gpu(n) if gpus.contains(&n) => Ok(()),
        DeviceRequest::Gpu(n) => {
            let have: Vec<String> = gpus.iter().map(|i| Device::Cuda(*i).to_string()).collect();
            Err(format!("there is no GPU {n} on this server; it has {}", have.join(", ")))
        }
    }
}

/// What the scheduler does with a queued run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start(Device),
    /// Its device is busy.
    Wait,
    /// Its GPU is gone (the server restarted on other hardware): the run must fail.
    Impossible(String),
}

/// The free places for trainers during one scheduling pass; each started run takes its own.
#[derive(Debug, Clone)]
pub struct Slots {
    cpu_free: usize,
    /// (index, busy) of every GPU the server has.
    gpus: Vec<(u32, bool)>,
}

impl Slots {
    /// `gpus`: the indices of the server's GPUs; `running`: the devices of running trainers.
    pub fn new(cpu_limit: usize, gpus: &[u32], running: impl IntoIterator<Item = Device>) -> Slots {
        let mut slots = Slots { cpu_free: cpu_limit, gpus: gpus.iter().map(|i| (*i, false)).collect() };
        for device in running {
            slots.take(device);
        }
        slots
    }

    fn take(&mut self, device: Device) {
        match device {
            Device::Cpu => self.cpu_free = self.cpu_free.saturating_sub(1),
            Device::Cuda(n) => {
                if let Some(g) = self.gpus.iter_mut().find(|(i, _)| *i == n) {
                    g.1 = true;
                }
            }
        }
    }

    /// Nothing more can start in this pass.
    pub fn is_full(&self) -> bool {
        self.cpu_free == 0 && self.gpus.iter().all(|(_, busy)| *busy)
    }

    /// Decides where a run with `request` goes and, if it can start, takes that slot.
    pub fn place(&mut self, request: DeviceRequest) -> Decision {
        let cpu = if self.cpu_free > 0 { Decision::Start(Device::Cpu) } else { Decision::Wait };
        let free_gpu = self.gpus.iter().find(|(_, busy)| !busy).map(|(i, _)| Device::Cuda(*i));
        let any_gpu = free_gpu.map(Decision::Start).unwrap_or(Decision::Wait);
        let decision = match request {
            DeviceRequest::Cpu => cpu,
            DeviceRequest::Auto if self.gpus.is_empty() => cpu,
            DeviceRequest::Auto => any_gpu,
            DeviceRequest::AnyGpu if self.gpus.is_empty() => {
                Decision::Impossible("it asked for a GPU, but no GPU is detected on this server now".into())
            }
            DeviceRequest::AnyGpu => any_gpu,
            DeviceRequest::Gpu(n) => match self.gpus.iter().find(|(i, _)| *i == n) {
                None => {
                    Decision::Impossible(format!("it asked for GPU cuda:{n}, which is not detected on this server now"))
                }
                Some((_, true)) => Decision::Wait,
                Some((_, false)) => Decision::Start(Device::Cuda(n)),
            },
        };
        if let Decision::Start(device) = decision {
            self.take(device);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_reject_junk() {
        for text in ["auto", "cpu", "gpu", "cuda:0", "cuda:12"] {
            assert_eq!(text.parse::<DeviceRequest>().unwrap().to_string(), text);
        }
        for junk in ["", "CPU", "cuda", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "tpu", " cpu"] {
            let e = junk.parse::<DeviceRequest>().unwrap_err();
            assert!(e.contains(r#""cuda:N""#), "{junk}: {e}");
        }
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(serde_json::to_value(Device::Cuda(1)).unwrap(), "cuda:1");
        assert_eq!(serde_json::from_value::<DeviceRequest>("gpu".into()).unwrap(), DeviceRequest::AnyGpu);
    }

    #[test]
    fn checks_requests_against_the_gpus() {
        assert!(check(DeviceRequest::Auto, &[], None).is_ok());
        assert!(check(DeviceRequest::Cpu, &[], None).is_ok());
        let e = check(DeviceRequest::AnyGpu, &[], Some("nvidia-smi not found")).unwrap_err();
        assert!(e.contains("no GPU was detected") && e.contains("nvidia-smi not found"), "{e}");
        assert!(check(DeviceRequest::Gpu(0), &[], None).unwrap_err().contains("no GPU was detected"));
        assert!(check(DeviceRequest::Gpu(1), &[0, 1], None).is_ok());
        let e = check(DeviceRequest::Gpu(2), &[0, 1], None).unwrap_err();
        assert!(e.contains("no GPU 2") && e.contains("cuda:0, cuda:1"), "{e}");
    }

    #[test]
    fn without_gpus_everything_shares_the_cpu_limit() {
        let mut slots = Slots::new(2, &[], [Device::Cpu]);
        assert_eq!(slots.place(DeviceRequest::Auto), Decision::Start(Device::Cpu));
        assert!(slots.is_full());
        assert_eq!(slots.place(DeviceRequest::Cpu), Decision::Wait);
        assert!(matches!(slots.place(DeviceRequest::AnyGpu), Decision::Impossible(_)));
        assert!(matches!(slots.place(DeviceRequest::Gpu(0)), Decision::Impossible(_)));
    }

    #[test]
    fn one_run_per_gpu() {
        let mut slots = Slots::new(1, &[0, 1], [Device::Cuda(1)]);
        assert_eq!(slots.place(DeviceRequest::Gpu(1)), Decision::Wait, "cuda:1 is busy");
        assert_eq!(slots.place(DeviceRequest::AnyGpu), Decision::Start(Device::Cuda(0)));
        assert_eq!(slots.place(DeviceRequest::Auto), Decision::Wait, "auto waits for a GPU when there are GPUs");
        assert_eq!(slots.place(DeviceRequest::Gpu(0)), Decision::Wait);
        assert!(!slots.is_full(), "the CPU slot is still free");
        assert_eq!(slots.place(DeviceRequest::Cpu), Decision::Start(Device::Cpu));
        assert!(slots.is_full());
        assert!(matches!(slots.place(DeviceRequest::Gpu(7)), Decision::Impossible(m) if m.contains("cuda:7")));
    }
}

//! Device discovery and `--device` selection.
//!
//! Order (the indices `ucw devices` prints): 0 = cpu, then hardware adapters, then
//! software ones; within each, by API (vulkan, metal, dx12, gl), name and PCI id, so the
//! numbering is stable across runs on one machine.

use serde::Serialize;
use std::str::FromStr;

use super::Backend;
use super::cpu::CpuBackend;
use super::gpu::{self, GpuBackend};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A hardware GPU if there is one, else the CPU (never a software adapter).
    Auto,
    Cpu,
    /// The first adapter of this wgpu API in the stable order.
    Api(&'static str),
    Index(usize),
}

pub const API_NAMES: &[&str] = &["vulkan", "metal", "dx12", "gl"];

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let l = s.to_ascii_lowercase();
        if l == "auto" {
            return Ok(DeviceSpec::Auto);
        }
        if l == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if let Some(api) = API_NAMES.iter().find(|a| **a == l) {
            return Ok(DeviceSpec::Api(api));
        }
        l.parse::<usize>().map(DeviceSpec::Index).map_err(|_| {
            format!(
                "unknown device \"{s}\" (expected auto, cpu, vulkan, metal, dx12, gl or an index from `ucw devices`)"
            )
        })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Api(a) => f.write_str(a),
            DeviceSpec::Index(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

/// One entry of `ucw devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub index: usize,
    /// "cpu", "vulkan", "metal", "dx12", "gl"
    pub api: String,
    pub name: String,
    /// "cpu" for the CPU backend; wgpu's device type otherwise (DiscreteGpu, Cpu, ...)
    pub device_type: String,
    pub software: bool,
    pub driver: String,
    pub driver_info: String,
    pub vendor_id: u32,
    pub device_id: u32,
    pub threads: Option<usize>,
    pub limits: Option<Limits>,
}

/// An adapter that claims compute shaders but cannot build ucw's pipelines (`gpu::probe`).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub api: String,
    pub name: String,
    pub driver_info: String,
    pub reason: String,
}

/// The stable list of devices, and the wgpu adapters behind entries 1.. .
pub struct Devices {
    pub infos: Vec<DeviceInfo>,
    adapters: Vec<wgpu::Adapter>,
    /// Adapters left out of `infos`, with why: numbering and `auto` never see them.
    pub skipped: Vec<Skipped>,
}

fn api_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    }
}

impl Devices {
    /// The CPU backend's entry (device 0), without probing any adapter.
    pub fn cpu_info() -> DeviceInfo {
        DeviceInfo {
            index: 0,
            api: "cpu".into(),
            name: "cpu".into(),
            device_type: "cpu".into(),
            software: false,
            driver: "ucw reference backend".into(),
            driver_info: format!("pure Rust, {} threads", rayon::current_num_threads()),
            vendor_id: 0,
            device_id: 0,
            threads: Some(rayon::current_num_threads()),
            limits: None,
        }
    }

    pub fn discover() -> Devices {
        let cpu = Self::cpu_info();
        let inst = gpu::instance();
        let mut skipped = Vec::new();
        let mut adapters: Vec<wgpu::Adapter> = gpu::compute_adapters(&inst)
            .into_iter()
            .filter(|a| match gpu::probe(a) {
                Ok(()) => true,
                Err(e) => {
                    let i = a.get_info();
                    skipped.push(Skipped {
                        api: gpu::backend_label(i.backend).into(),
                        name: i.name.clone(),
                        driver_info: i.driver_info.clone(),
                        reason: e.to_string(),
                    });
                    false
                }
            })
            .collect();
        adapters.sort_by_cached_key(|a| {
            let i = a.get_info();
            (
                i.device_type == wgpu::DeviceType::Cpu,
                api_rank(i.backend),
                i.name.clone(),
                i.device_pci_bus_id.clone(),
                i.device,
            )
        });
        let mut infos = vec![cpu];
        for (k, a) in adapters.iter().enumerate() {
            let i = a.get_info();
            let l = a.limits();
            infos.push(DeviceInfo {
                index: k + 1,
                api: gpu::backend_label(i.backend).into(),
                name: i.name.clone(),
                device_type: format!("{:?}", i.device_type),
                software: i.device_type == wgpu::DeviceType::Cpu,
                driver: i.driver.clone(),
                driver_info: i.driver_info.clone(),
                vendor_id: i.vendor,
                device_id: i.device,
                threads: None,
                limits: Some(Limits {
                    max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                    max_buffer_size: l.max_buffer_size,
                    max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
                    max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
                    max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                    max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
                }),
            });
        }
        Devices { infos, adapters, skipped }
    }

    /// Index of the device `spec` names, or an error listing what is present.
    pub fn resolve(&self, spec: DeviceSpec) -> Result<usize> {
        let found = match spec {
            DeviceSpec::Cpu => Some(0),
            DeviceSpec::Auto => Some(self.infos.iter().position(|d| d.index > 0 && !d.software).unwrap_or(0)),
            DeviceSpec::Api(api) => self.infos.iter().position(|d| d.api == api),
            DeviceSpec::Index(n) => (n < self.infos.len()).then_some(n),
        };
        found.ok_or_else(|| {
            let wanted = match spec {
                DeviceSpec::Api(a) => a.to_string(),
                DeviceSpec::Index(n) => format!("device {n}"),
                _ => unreachable!(),
            };
            bad_input!("{wanted} is not present; available: {}", self.summary())
        })
    }

    /// "0 cpu, 1 vulkan llvmpipe (...), ..."
    pub fn summary(&self) -> String {
        self.infos.iter().map(|d| format!("{} {} {}", d.index, d.api, d.name)).collect::<Vec<_>>().join(", ")
    }

    /// Open device `index` as a backend.
    pub fn open(&self, index: usize) -> Result<Box<dyn Backend>> {
        if index == 0 {
            return Ok(Box::new(CpuBackend::new()));
        }
        let adapter = self.adapters.get(index - 1).ok_or_else(|| bad_input!("no device {index}"))?;
        Ok(Box::new(GpuBackend::open(adapter)?))
    }

    /// Open device `index` as a wgpu backend (for tests that need GPU-only knobs).
    pub fn open_gpu(&self, index: usize) -> Result<GpuBackend> {
        let adapter = self
            .adapters
            .get(index.wrapping_sub(1))
            .ok_or_else(|| Error::bad_input(format!("device {index} is not a wgpu adapter")))?;
        GpuBackend::open(adapter)
    }
}

/// Resolve and open in one step (what commands do with `--device`).
pub fn open(spec: DeviceSpec) -> Result<(DeviceInfo, Box<dyn Backend>)> {
    // The CPU needs no adapter probing (which loads GPU drivers and may print their noise).
    if matches!(spec, DeviceSpec::Cpu | DeviceSpec::Index(0)) {
        return Ok((Devices::cpu_info(), Box::new(CpuBackend::new())));
    }
    let devices = Devices::discover();
    let i = devices.resolve(spec)?;
    Ok((devices.infos[i].clone(), devices.open(i)?))
}

//! The wgpu backend: adapters on every API wgpu supports, devices opened with the adapter's
//! own limits, cached pipelines, and dispatches split to fit binding-size and grid limits.

mod gram;
mod kernels;
mod layer;
pub mod lint;
pub mod params;
mod resident;
pub mod shaders;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Result;

/// Workgroup size every 1-D kernel here declares (`@workgroup_size(64)`).
pub const WORKGROUP: u32 = 64;

pub fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::all();
    // Validation layers are a debugging aid, not needed for correctness checks of our own.
    desc.flags = wgpu::InstanceFlags::empty();
    wgpu::Instance::new(desc)
}

/// Adapters that can run compute shaders, in wgpu's enumeration order.
pub fn compute_adapters(inst: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        .collect()
}

/// Whether `adapter` can really run ucw's kernels: open it and build one pipeline. The
/// downlevel flags are not enough: NVIDIA's EGL driver gives wgpu an OpenGL 3.3 context
/// that advertises GL_ARB_compute_shader, so wgpu reports compute shaders, yet every
/// compute pipeline then fails ("The selected version doesn't support ... COMPUTE_SHADER",
/// seen on an H200 with driver 580.159.04).
pub fn probe(adapter: &wgpu::Adapter) -> Result<()> {
    let b = GpuBackend::open(adapter)?;
    b.pipeline("add.wgsl", "add").map(|_| ())
}

/// Bytes the backend currently holds on the device, and the most it has held.
#[derive(Default, Debug)]
pub struct MemStats {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemStats {
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
    fn add(&self, n: u64) {
        let now = self.current.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        self.current.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Where a GPU backend's time goes, per kernel entry point (and uploads, readbacks), when
/// `UCW_GPU_PROFILE=1`: every dispatch then waits for the device, so each entry's time is
/// its own (the run is slower and the totals are wall times, not device counters). Printed
/// to stderr when the backend is dropped. Off, it costs one branch per call.
#[derive(Default)]
struct Profile {
    on: bool,
    by_name: Mutex<HashMap<&'static str, (u64, f64, u64)>>,
}

impl Profile {
    fn from_env() -> Profile {
        Profile { on: std::env::var("UCW_GPU_PROFILE").is_ok_and(|v| v == "1"), ..Default::default() }
    }

    fn add(&self, name: &'static str, since: std::time::Instant, bytes: u64) {
        let mut m = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(name).or_default();
        e.0 += 1;
        e.1 += since.elapsed().as_secs_f64();
        e.2 += bytes;
    }

    fn report(&self, device: &str) {
        let m = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return; // opened and never used (e.g. the adapter probe)
        }
        let mut rows: Vec<_> = m.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let total: f64 = rows.iter().map(|r| r.1.1).sum();
        eprintln!("UCW_GPU_PROFILE {device}: {total:.3} s in calls");
        for (name, (calls, secs, bytes)) in rows {
            eprintln!(
                "  {name:<16} {calls:>8} calls {secs:>9.3} s {:>5.1}% {:>10.1} MB",
                100.0 * secs / total.max(1e-9),
                *bytes as f64 / 1e6
            );
        }
    }
}

/// A device buffer counted in `MemStats` while it lives.
pub struct Buf {
    pub buf: wgpu::Buffer,
    pub size: u64,
    stats: Arc<MemStats>,
    /// For a parameter buffer, the kernels (shader files) its struct serves.
    kernels: &'static [&'static str],
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.stats.sub(self.size);
    }
}

pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
    /// Largest storage binding a kernel may use (device limit, lowered only by tests).
    max_binding: u64,
    /// Largest workgroup count per grid dimension (device limit, lowered only by tests).
    max_groups_per_dim: u32,
    /// How much one invocation of the chunked kernels walks (lowered only by tests).
    chunks: ChunkSizes,
    /// First uncaptured device error; checked after every submission.
    error: Arc<Mutex<Option<String>>>,
    pub mem: Arc<MemStats>,
    /// Most loop iterations one invocation may run on this driver, where it has a limit.
    loop_limit: Option<u64>,
    profile: Profile,
    /// Bytes of weights `prepare_matmul` may keep on the device (`allow_resident_weights`),
    /// and the bytes it keeps now.
    resident_limit: AtomicU64,
    resident: Arc<AtomicU64>,
    /// Submissions, uploads and readbacks (`Backend::traffic`).
    pub(crate) traffic: crate::backend::traffic::TrafficCounter,
    /// Whether calibration statistics accumulate on this device (`Backend::gram_open`).
    gram_on_device: bool,
    /// Whether attention's passes over keys run a workgroup per block of queries (else one
    /// invocation per query, head and chunk; `attn_policy`).
    attn_workgroups: bool,
    /// Whether the tiled matmul multiplies byte digits with packed 4×8-bit dot products
    /// (`matmul_dot4`; else two exact i32 products per multiply-add; `dot_policy`).
    packed_dot: bool,
}

impl Drop for GpuBackend {
    fn drop(&mut self) {
        if self.profile.on {
            self.profile.report(&self.info.name);
        }
    }
}

/// What one invocation of a chunked kernel walks. Integer maxima and sums over chunks: no
/// choice can change a bit, and tests lower them (`with_chunk_sizes`) to prove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    /// Logits per invocation of nll_max.wgsl and nll_sum.wgsl (at most 4096: nll_sum's
    /// 64-bit chunk sum is < 2^30 · 2^12).
    pub nll: usize,
    /// Outputs per invocation of renorm_top.wgsl.
    pub renorm: usize,
    /// Fewest keys per invocation of attn_max.wgsl and attn_sum.wgsl (more when the partial
    /// sums would not fit a binding).
    pub attn_keys: usize,
    /// Most weight columns one invocation of matmul.wgsl walks (`MATMUL_SLICE_COLS`; at
    /// least one whole group), split-K beyond.
    pub matmul_cols: usize,
}

impl ChunkSizes {
    pub const DEFAULT: ChunkSizes =
        ChunkSizes { nll: 4096, renorm: 1024, attn_keys: 64, matmul_cols: MATMUL_SLICE_COLS };
}

/// Most weight columns one invocation of matmul.wgsl walks: rows of up to 8192 columns (every
/// layer up to Llama's 8192 hidden size) run in one slice, as they always did; wider rows are
/// split into slices of whole groups (split-K) added exactly by matmul_reduce.wgsl. 8192
/// columns and their 128 groups are 8320 loop iterations, far inside llvmpipe's 65,535.
pub const MATMUL_SLICE_COLS: usize = 8192;

/// Where calibration statistics accumulate (`Backend::gram_open`): `UCW_GPU_GRAM=device` or
/// `host` where set, else on the device unless the adapter is a CPU (a software rasterizer
/// such as llvmpipe, where the host's f64 GEMM is far faster: SmolLM2-135M's statistics
/// over 2 × 128 tokens took 70 s on llvmpipe Vulkan against 2.4 s on the host,
/// BENCHMARKS.md). Exact integers either way: a choice of speed, never of bits.
fn gram_policy(setting: Option<&str>, device_type: wgpu::DeviceType) -> bool {
    match setting {
        Some("device") => true,
        Some("host") => false,
        _ => device_type != wgpu::DeviceType::Cpu,
    }
}

/// How attention walks keys (`shaders/attn_max.wgsl`, `attn_sum.wgsl`): `UCW_GPU_ATTN=
/// workgroups` or `rows` where set, else a workgroup per block of 8 queries (keys staged
/// once per block in workgroup memory, weighted values summed in registers: 8× fewer key
/// reads from device memory and no read-modify-write per key) unless the adapter is a
/// CPU: llvmpipe ran those kernels 1.2–1.6× slower than one invocation per (query, head,
/// chunk) (SmolLM2-135M, 1 × 512, BENCHMARKS.md). Same bits either way.
fn attn_policy(setting: Option<&str>, device_type: wgpu::DeviceType) -> bool {
    match setting {
        Some("workgroups") => true,
        Some("rows") => false,
        _ => device_type != wgpu::DeviceType::Cpu,
    }
}

/// How the tiled matmul multiplies (`shaders/matmul.wgsl`): `UCW_GPU_DOT=packed` or `split`
/// where set, else packed 4×8-bit dot products (`matmul_dot4`) on Vulkan and DX12 adapters
/// that are not CPUs, the split i32 products (`matmul`) elsewhere. wgpu does not say whether
/// the device has the instruction; naga emits it (SPIR-V `OpSDot`, HLSL `dot4add_i8packed`)
/// where the Vulkan device has VK_KHR_shader_integer_dot_product (core in Vulkan 1.3) or
/// D3D12 has shader model 6.4, which current NVIDIA, AMD and Intel drivers have; Metal and GL
/// get shifts and multiplies, where six byte dots per four multiply-adds cannot beat the
/// split kernel's eight i32 products. Same bits either way.
fn dot_policy(setting: Option<&str>, device_type: wgpu::DeviceType, backend: wgpu::Backend) -> bool {
    match setting {
        Some("packed") => true,
        Some("split") => false,
        _ => device_type != wgpu::DeviceType::Cpu && matches!(backend, wgpu::Backend::Vulkan | wgpu::Backend::Dx12),
    }
}

/// Mesa's llvmpipe (the software Vulkan and GL adapters) stops every loop of a shader
/// invocation once the invocation has run this many loop iterations in all (gallivm
/// `LP_MAX_TGSI_LOOP_ITERATIONS`, "shared between every loop"), silently: the results are
/// then wrong, not missing. Hardware drivers have no such limit.
pub const LLVMPIPE_LOOP_LIMIT: u64 = 65535;

impl GpuBackend {
    pub fn open(adapter: &wgpu::Adapter) -> Result<GpuBackend> {
        let info = adapter.get_info();
        // The adapter's own limits, not WebGPU's defaults: large models need large buffers.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("ucw"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| bad_input!("{} ({:?}): cannot open device: {e}", info.name, info.backend))?;
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            if s.is_none() {
                *s = Some(e.to_string());
            }
        }));
        let loop_limit = info.name.contains("llvmpipe").then_some(LLVMPIPE_LOOP_LIMIT);
        let gram_on_device = gram_policy(std::env::var("UCW_GPU_GRAM").ok().as_deref(), info.device_type);
        let attn_workgroups = attn_policy(std::env::var("UCW_GPU_ATTN").ok().as_deref(), info.device_type);
        let packed_dot = dot_policy(std::env::var("UCW_GPU_DOT").ok().as_deref(), info.device_type, info.backend);
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let max_groups_per_dim = limits.max_compute_workgroups_per_dimension;
        Ok(GpuBackend {
            device,
            queue,
            info,
            limits,
            pipelines: Mutex::default(),
            max_binding,
            max_groups_per_dim,
            chunks: ChunkSizes::DEFAULT,
            loop_limit,
            error,
            mem: Arc::default(),
            profile: Profile::from_env(),
            gram_on_device,
            attn_workgroups,
            packed_dot,
            resident_limit: AtomicU64::new(0),
            resident: Arc::default(),
            traffic: Default::default(),
        })
    }

    /// Refuse a kernel call whose invocations would loop more often than this driver
    /// allows (see `LLVMPIPE_LOOP_LIMIT`): an error instead of silently wrong bits.
    /// `iters` is an upper bound of one invocation's loop iterations, from the shader.
    pub(crate) fn check_loops(&self, kernel: &str, iters: u64) -> Result<()> {
        match self.loop_limit {
            Some(limit) if iters > limit => Err(bad_input!(
                "{}: the {kernel} kernel would run up to {iters} loop iterations per invocation here; \
                 this driver (Mesa llvmpipe) silently stops shaders after {limit}, so its results would \
                 be wrong: use --device cpu (or a hardware GPU) for this size",
                self.info.name
            )),
            _ => Ok(()),
        }
    }

    /// Keep calibration statistics on this device (`true`) or on the host, whatever the
    /// adapter type and `UCW_GPU_GRAM` say: the same integers either way (tests exercise
    /// both on software adapters).
    pub fn with_gram_on_device(mut self, on: bool) -> Self {
        self.gram_on_device = on;
        self
    }

    pub(crate) fn gram_on_device(&self) -> bool {
        self.gram_on_device
    }

    /// Run attention's passes over keys a workgroup per block of queries (`true`) or one
    /// invocation per query, head and chunk, whatever the adapter type and `UCW_GPU_ATTN`
    /// say: the same bits either way (tests run both on software adapters).
    pub fn with_attn_workgroups(mut self, on: bool) -> Self {
        self.attn_workgroups = on;
        self
    }

    pub(crate) fn attn_workgroups(&self) -> bool {
        self.attn_workgroups
    }

    /// Run the tiled matmul on packed 4×8-bit dot products (`true`) or on split i32
    /// products, whatever the adapter and `UCW_GPU_DOT` say: the same bits either way (tests
    /// run both on software adapters).
    pub fn with_packed_dot(mut self, on: bool) -> Self {
        self.packed_dot = on;
        self
    }

    pub(crate) fn packed_dot(&self) -> bool {
        self.packed_dot
    }

    /// Lower the binding-size and grid limits so tests can exercise the splitting paths on
    /// small inputs. Results must not change (DESIGN §3 rule 5).
    pub fn with_work_limits(mut self, max_binding: u64, max_groups_per_dim: u32) -> Self {
        self.max_binding = max_binding.clamp(4, self.max_binding);
        self.max_groups_per_dim = max_groups_per_dim.clamp(1, self.max_groups_per_dim);
        self
    }

    /// Lower the chunk sizes of the chunked kernels (each clamped to 1..=its default) so
    /// tests cross many chunk boundaries on small inputs. Results must not change (DESIGN §3
    /// rule 5).
    pub fn with_chunk_sizes(mut self, c: ChunkSizes) -> Self {
        let d = ChunkSizes::DEFAULT;
        self.chunks = ChunkSizes {
            nll: c.nll.clamp(1, d.nll),
            renorm: c.renorm.clamp(1, d.renorm),
            attn_keys: c.attn_keys.clamp(1, d.attn_keys),
            matmul_cols: c.matmul_cols.clamp(1, d.matmul_cols),
        };
        self
    }

    /// Split-K of a matmul by `w`: (groups per slice, slices).
    pub(crate) fn matmul_slices(&self, w: &crate::fixed::tensor::GroupFixed) -> (usize, usize) {
        let g = (w.params.group_size as usize).max(1);
        let per = (self.chunks.matmul_cols / g).max(1);
        (per, w.groups_per_row().div_ceil(per).max(1))
    }

    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    fn device_error(&self, doing: &str) -> Result<()> {
        let taken = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(e) => Err(bad_input!("{} ({:?}): {doing}: {e}", self.info.name, self.info.backend)),
            None => Ok(()),
        }
    }

    /// The compute pipeline for `entry` in shader file `file`, compiled once per backend.
    fn pipeline(&self, file: &'static str, entry: &'static str) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&(file, entry)) {
            return Ok(p.clone());
        }
        let composed = shaders::compose(file)?;
        // naga first, so a broken shader is reported with its file and line rather than as
        // an opaque device error.
        shaders::validate(&composed)?;
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(file),
            source: wgpu::ShaderSource::Wgsl(composed.source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            // Every kernel writes its workgroup memory before reading it (matmul.wgsl's
            // staging covers the whole tile), so the zeroing wgpu would add is not needed;
            // on the GL backend it cost 88 s of Mesa shader compilation for matmul.wgsl's
            // 16 KiB of tiles (cold shader cache), against under a second without.
            compilation_options: wgpu::PipelineCompilationOptions {
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        });
        self.device_error(&format!("compiling shaders/{file} entry {entry}"))?;
        let p = Arc::new(pipeline);
        cache.insert((file, entry), p.clone());
        Ok(p)
    }

    fn track(&self, buf: wgpu::Buffer, size: u64) -> Buf {
        self.mem.add(size);
        Buf { buf, size, stats: self.mem.clone(), kernels: &[] }
    }

    /// A storage buffer holding `bytes`, padded with zeros to a multiple of 4 (at least 4),
    /// written straight into the mapped buffer (uploads were 39% of the H200's call time
    /// when each went through two intermediate copies; BENCHMARKS.md).
    fn upload(&self, label: &str, bytes: &[u8]) -> Buf {
        let t0 = std::time::Instant::now();
        let size = (bytes.len().max(4).div_ceil(4) * 4) as u64;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        write_mapped(&buf, bytes);
        self.traffic.uploaded(size);
        if self.profile.on {
            self.profile.add("(upload)", t0, size);
        }
        self.track(buf, size)
    }

    fn upload_words(&self, label: &str, words: &[u32]) -> Buf {
        match le_bytes(words) {
            Some(bytes) => self.upload(label, bytes),
            None => self.upload(label, &words.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()),
        }
    }

    fn upload_i32(&self, label: &str, v: &[i32]) -> Buf {
        match le_bytes(v) {
            Some(bytes) => self.upload(label, bytes),
            None => self.upload(label, &v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>()),
        }
    }

    /// Rows of `cols` elements at `bytes_per_element` in the largest binding that fit one
    /// storage binding. Rows are independent in every row-wise kernel, so how they are
    /// split never changes results.
    fn rows_per_chunk(&self, cols: usize, bytes_per_element: u64) -> Result<usize> {
        let n = self.max_binding / (cols.max(1) as u64 * bytes_per_element);
        if n == 0 {
            return Err(bad_input!(
                "{}: one row of {cols} elements exceeds the device's {} byte storage binding",
                self.info.name,
                self.max_binding
            ));
        }
        Ok(n as usize)
    }

    /// A zero-filled storage buffer of at least `size` bytes.
    fn zeroed(&self, label: &str, size: u64) -> Buf {
        let size = size.max(4).div_ceil(4) * 4;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.track(buf, size)
    }

    /// A kernel's uniform parameters (binding 0 of every kernel), tagged with the kernels
    /// they are for.
    pub(crate) fn params<P: params::Uniform>(&self, p: &P) -> Buf {
        let bytes: Vec<u8> = p.words().iter().flat_map(|w| w.to_le_bytes()).collect();
        let size = (bytes.len().max(16).div_ceil(16) * 16) as u64;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        write_mapped(&buf, &bytes);
        self.traffic.uploaded(size);
        let mut b = self.track(buf, size);
        b.kernels = P::FILES;
        b
    }

    /// Grid for `groups` workgroups: one dimension while it fits, else a 2-D grid whose
    /// flat index the kernel rebuilds as `gid.x + gid.y * num_workgroups.x * 64`.
    fn grid(&self, groups: u64) -> Result<(u32, u32)> {
        let max = self.max_groups_per_dim as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        if y > max {
            return Err(bad_input!("{}: dispatch of {groups} workgroups exceeds the device grid", self.info.name));
        }
        Ok((x as u32, y as u32))
    }

    /// An empty recording: dispatches and copies go into one command encoder and reach the
    /// device in one submission (`submit`, or the readback's).
    pub(crate) fn rec(&self) -> Rec {
        Rec { enc: self.device.create_command_encoder(&Default::default()), keep: Vec::new() }
    }

    /// Record `entry` of `file` over `invocations` threads with `buffers` bound to bindings
    /// 0.. of group 0. With `UCW_GPU_PROFILE=1` the recording so far is submitted and
    /// waited for at once, so each entry's time is its own (the submissions counted then
    /// are the profile's, not the pipeline's).
    pub(crate) fn record(
        &self,
        rec: &mut Rec,
        file: &'static str,
        entry: &'static str,
        buffers: &[&Buf],
        invocations: u64,
    ) -> Result<()> {
        let t0 = std::time::Instant::now();
        if !buffers.first().is_some_and(|b| b.kernels.contains(&file)) {
            return Err(bad_input!(
                "internal error: shaders/{file} entry {entry} recorded without its parameters (params::*) at binding 0"
            ));
        }
        let pipeline = self.pipeline(file, entry)?;
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.buf.as_entire_binding() })
            .collect();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let (x, y) = self.grid(invocations.div_ceil(WORKGROUP as u64))?;
        {
            let mut pass = rec.enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        if self.profile.on {
            let done = std::mem::replace(&mut rec.enc, self.device.create_command_encoder(&Default::default()));
            self.queue.submit([done.finish()]);
            self.traffic.submitted();
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| bad_input!("{}: device lost while waiting: {e}", self.info.name))?;
            self.profile.add(entry, t0, 0);
        }
        self.device_error(&format!("recording shaders/{file} entry {entry}"))
    }

    /// Hand a recording to the device queue (one submission).
    pub(crate) fn submit(&self, rec: Rec, doing: &str) -> Result<()> {
        self.queue.submit([rec.enc.finish()]);
        self.traffic.submitted();
        drop(rec.keep);
        self.device_error(doing)
    }

    /// Bind `buffers` to bindings 0.. of group 0 and run `entry` over `invocations`
    /// threads, in a submission of its own.
    fn dispatch(&self, file: &'static str, entry: &'static str, buffers: &[&Buf], invocations: u64) -> Result<()> {
        let mut rec = self.rec();
        self.record(&mut rec, file, entry, buffers, invocations)?;
        self.submit(rec, &format!("running shaders/{file} entry {entry}"))
    }

    /// Copy a buffer back to the host (one submission).
    fn read(&self, src: &Buf) -> Result<Vec<u8>> {
        Ok(self.read_after(self.rec(), &[src])?.pop().unwrap_or_default())
    }

    /// Submit `rec` with copies of `srcs` into one staging buffer appended, wait, and
    /// return each source's bytes: whatever was recorded and every readback in one
    /// submission.
    pub(crate) fn read_after(&self, mut rec: Rec, srcs: &[&Buf]) -> Result<Vec<Vec<u8>>> {
        let t0 = std::time::Instant::now();
        let total: u64 = srcs.iter().map(|b| b.size).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let staging = self.track(staging, total.max(4));
        let mut at = 0;
        for b in srcs {
            // Buf sizes are multiples of 4 (COPY_BUFFER_ALIGNMENT): every offset is aligned.
            rec.enc.copy_buffer_to_buffer(&b.buf, 0, &staging.buf, at, b.size);
            at += b.size;
        }
        self.submit(rec, "submitting work before a readback")?;
        self.traffic.read_back(total);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| bad_input!("{}: device lost while waiting: {e}", self.info.name))?;
        let mapped = rx.recv().map_err(|_| bad_input!("{}: readback callback never ran", self.info.name))?;
        mapped.map_err(|e| bad_input!("{}: cannot map readback buffer: {e}", self.info.name))?;
        self.device_error("reading back results")?;
        let all = staging
            .buf
            .slice(..)
            .get_mapped_range()
            .map_err(|e| bad_input!("{}: cannot read mapped buffer: {e}", self.info.name))?
            .to_vec();
        staging.buf.unmap();
        if self.profile.on {
            self.profile.add("(readback)", t0, total);
        }
        let mut out = Vec::with_capacity(srcs.len());
        let mut at = 0;
        for b in srcs {
            out.push(all[at..at + b.size as usize].to_vec());
            at += b.size as usize;
        }
        Ok(out)
    }
}

/// Dispatches and copies recorded into one command encoder, submitted together: a whole
/// decoder layer reaches the device as one submission instead of one per dispatch.
/// Temporaries a recorded dispatch binds are kept here until the submission, so the
/// device-memory count (`MemStats`) holds them while the device may still use them.
pub(crate) struct Rec {
    enc: wgpu::CommandEncoder,
    keep: Vec<Buf>,
}

impl Rec {
    /// Keep `b` alive until this recording is submitted.
    pub(crate) fn keep(&mut self, b: Buf) {
        self.keep.push(b);
    }

    /// Record a copy of `src` into `dst` at byte `offset` (multiples of 4).
    pub(crate) fn copy(&mut self, src: &Buf, dst: &Buf, offset: u64, bytes: u64) {
        self.enc.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, offset, bytes);
    }
}

/// Fill a buffer created with `mapped_at_creation` with `bytes`, zeros after them, and
/// unmap it.
fn write_mapped(buf: &wgpu::Buffer, bytes: &[u8]) {
    {
        let mut m = buf.slice(..).get_mapped_range_mut().expect("buffer mapped at creation");
        m.slice(..bytes.len()).copy_from_slice(bytes);
        m.slice(bytes.len()..).fill(0);
    }
    buf.unmap();
}

/// The little-endian bytes of `v` without copying, where the host is little-endian (the
/// shaders read little-endian words); None elsewhere.
fn le_bytes<T: bytemuck::Pod>(v: &[T]) -> Option<&[u8]> {
    cfg!(target_endian = "little").then(|| bytemuck::cast_slice(v))
}

/// The shaders' 64-bit value i of a readback's words: (lo, hi) at words[2i], words[2i + 1].
pub(crate) fn i64_at(words: &[u32], i: usize) -> i64 {
    (words[2 * i] as u64 | (words[2 * i + 1] as u64) << 32) as i64
}

/// Little-endian 32-bit words of `bytes` (a readback), in one pass.
pub(crate) fn words_le(bytes: &[u8]) -> Vec<u32> {
    if cfg!(target_endian = "little") {
        // Copies into an aligned vector whatever the alignment of `bytes`.
        return bytemuck::pod_collect_to_vec(&bytes[..bytes.len() / 4 * 4]);
    }
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

pub(crate) fn backend_label(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

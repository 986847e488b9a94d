//! The reference backend: pure Rust, the twin of every WGSL kernel, and a real backend for
//! machines without a usable GPU.
//!
//! Parallel work is split into fixed partitions (a constant number of rows per task) that do
//! not depend on the thread count; outputs of different tasks never overlap, and the only
//! cross-task reduction (the first bad index) is a minimum, so results are identical on any
//! number of threads (DESIGN §3 rule 6).

pub mod ingest;
pub mod wide;

use rayon::prelude::*;

use crate::backend::{Backend, GroupFixed, IngestParams, KernelError, WideCase, WideResult, check_ingest_args};
use crate::dtype::DType;
use crate::error::Error;

/// Rows per parallel task for row-wise kernels.
const ROWS_PER_TASK: usize = 16;

#[derive(Default)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn api(&self) -> &'static str {
        "cpu"
    }

    fn ingest(
        &self,
        src: &[u8],
        dtype: DType,
        rows: usize,
        cols: usize,
        params: IngestParams,
    ) -> Result<GroupFixed, KernelError> {
        check_ingest_args(src, dtype, rows, cols, params)?;
        let gpr = cols.div_ceil(params.group_size as usize);
        let mut exponents = vec![0i32; rows * gpr];
        let mut mantissas = vec![0i32; rows * cols];
        let first_bad = exponents
            .par_chunks_mut(ROWS_PER_TASK * gpr.max(1))
            .zip(mantissas.par_chunks_mut(ROWS_PER_TASK * cols.max(1)))
            .enumerate()
            .filter_map(|(task, (e, m))| ingest::ingest_rows(src, dtype, cols, params, task * ROWS_PER_TASK, e, m))
            .min();
        if let Some(index) = first_bad {
            return Err(KernelError::NonFinite { index });
        }
        Ok(GroupFixed { rows, cols, params, exponents, mantissas })
    }

    fn wide_ops(&self, cases: &[WideCase]) -> Result<Vec<WideResult>, Error> {
        Ok(cases.par_iter().map(wide::eval).collect())
    }
}

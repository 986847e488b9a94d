//! Host ↔ device traffic: how many queue submissions a backend made and how many bytes it
//! wrote to the device and read back from it (`Backend::traffic`).
//!
//! Its own module beside the `Backend` trait, not in `crate::fixed`: it is a measurement
//! of a backend, not a fixed-point type; the trait names `Traffic` and the GPU backend
//! keeps a `TrafficCounter`, and nothing else here depends on either.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counts of one backend so far (or, as a difference of two snapshots, of one job).
///
/// - `submissions`: command buffers handed to the device queue (`queue.submit`), the
///   readbacks' copy submissions included;
/// - `uploaded_bytes`: bytes the host wrote into device buffers: every buffer filled at
///   creation, counted at its whole size (the data and the zero padding to a multiple of 4
///   bytes, 16 for uniforms, that the host writes with it);
/// - `readback_bytes`: bytes copied into mapped staging buffers and read by the host (the
///   whole source buffer each time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub submissions: u64,
    pub uploaded_bytes: u64,
    pub readback_bytes: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self` (two snapshots of one backend).
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            submissions: self.submissions - earlier.submissions,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
            readback_bytes: self.readback_bytes - earlier.readback_bytes,
        }
    }

    /// Field by field sum.
    pub fn plus(self, o: Traffic) -> Traffic {
        Traffic {
            submissions: self.submissions + o.submissions,
            uploaded_bytes: self.uploaded_bytes + o.uploaded_bytes,
            readback_bytes: self.readback_bytes + o.readback_bytes,
        }
    }
}

/// The running counts, shared by every thread calling the backend: one relaxed atomic add
/// per submission, upload or readback (each of which already costs a driver call).
#[derive(Debug, Default)]
pub struct TrafficCounter {
    submissions: AtomicU64,
    uploaded: AtomicU64,
    readback: AtomicU64,
}

impl TrafficCounter {
    pub fn submitted(&self) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploaded.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn read_back(&self, bytes: u64) {
        self.readback.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Traffic {
        Traffic {
            submissions: self.submissions.load(Ordering::Relaxed),
            uploaded_bytes: self.uploaded.load(Ordering::Relaxed),
            readback_bytes: self.readback.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_differences() {
        let c = TrafficCounter::default();
        let a = c.snapshot();
        c.submitted();
        c.submitted();
        c.uploaded(12);
        c.read_back(8);
        let b = c.snapshot();
        assert_eq!(b.since(a), Traffic { submissions: 2, uploaded_bytes: 12, readback_bytes: 8 });
        assert_eq!(b.since(a).plus(b), Traffic { submissions: 4, uploaded_bytes: 24, readback_bytes: 16 });
    }
}

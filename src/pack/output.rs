//! Writing a directory atomically: build it in a temporary directory beside the target,
//! then rename it into place, so a failure never leaves a half-written result that looks
//! complete.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A temporary directory beside the destination, removed on drop unless installed.
pub struct Staging {
    pub path: PathBuf,
    dest: PathBuf,
}

impl Staging {
    /// Refuses a destination that is a file, or a non-empty directory without `force`.
    pub fn new(dest: &Path, force: bool) -> Result<Staging> {
        match std::fs::symlink_metadata(dest) {
            Err(_) => {}
            Ok(m) if !m.is_dir() => return Err(bad_input!("{}: exists and is not a directory", dest.display())),
            Ok(_) => {
                let mut entries = std::fs::read_dir(dest).map_err(|e| Error::io(dest, "cannot list", e))?;
                if entries.next().is_some() && !force {
                    return Err(bad_input!("{}: exists and is not empty (use --force to replace it)", dest.display()));
                }
            }
        }
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = dest.file_name().ok_or_else(|| bad_input!("{}: not a valid output path", dest.display()))?;
        let prefix = format!(".{}.ucw-tmp-", base.to_string_lossy());
        remove_stale(parent, &prefix);
        let path = parent.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, "cannot create", e))?;
        Ok(Staging { path, dest: dest.to_path_buf() })
    }

    /// Move the finished directory into place. An existing destination is moved aside
    /// first and removed only once the new one is in place.
    pub fn install(self) -> Result<()> {
        if let Ok(d) = std::fs::File::open(&self.path) {
            let _ = d.sync_all();
        }
        let old = self.path.with_extension("old");
        let had_old = self.dest.exists();
        if had_old {
            std::fs::rename(&self.dest, &old)
                .map_err(|e| Error::io(&self.dest, "cannot move the old directory aside", e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, &self.dest) {
            if had_old {
                let _ = std::fs::rename(&old, &self.dest);
            }
            return Err(Error::io(&self.dest, "cannot move the new directory into place", e));
        }
        if had_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(())
    }
}

/// Remove staging directories (`PREFIX<pid>`, `PREFIX<pid>.old`) left by runs that were
/// killed (their process no longer exists), so an interrupted compression costs nothing
/// but the rerun. A live process's directory is never touched.
fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let Ok(pid) = rest.trim_end_matches(".old").parse::<u32>() else { continue };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return true };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_pid: u32) -> bool {
    true
}

impl Drop for Staging {
    fn drop(&mut self) {
        // After a successful install the path no longer exists; otherwise clean up.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

//! Memory-mapped safetensors checkpoints (single file or sharded with an index).
//!
//! Tensors are zero-copy views into the mappings; nothing is read whole into memory.
//! The reader accepts any dtype (so `ucw hash` works on any checkpoint); the model layer
//! restricts dtypes to what the codec understands.

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A header entry: dtype, shape, and [begin, end) relative to the data section.
type Entry = (Dtype, Vec<usize>, (usize, usize));

/// One mapped `.safetensors` file with its parsed header.
pub struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    tensors: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        // SAFETY: the mapping is read-only; a checkpoint being rewritten underneath us is an
        // external race we cannot rule out, but every digest we report is of what we read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "cannot map", e))?;
        // The safetensors crate bounds the header (≤ 100 MB, within the file), checks that
        // offsets are contiguous and that the data section ends exactly at the end of file.
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad_input!("{}: not a valid safetensors file: {e}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, info) in meta.tensors() {
            tensors.insert(name, (info.dtype, info.shape.clone(), info.data_offsets));
        }
        let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(SafetensorsFile { path: path.to_path_buf(), mmap, data_start: 8 + header_len, tensors, metadata })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let (dtype, shape, (b, e)) = self.tensors.get(name)?;
        Some(TensorView {
            name: self.tensors.get_key_value(name)?.0,
            dtype: *dtype,
            shape,
            bytes: &self.mmap[self.data_start + b..self.data_start + e],
            file: &self.path,
            file_offset: (self.data_start + b) as u64,
        })
    }

    pub fn file_len(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// Drop this process's pages of tensor `name` (touched mapped pages count in RSS); a
    /// later read faults them back in from the page cache. Advisory: errors are ignored.
    pub fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some((_, _, (b, e))) = self.tensors.get(name)
            && e > b
        {
            // SAFETY: a read-only private file mapping: after MADV_DONTNEED the pages read
            // back the same file bytes, so every borrowed slice keeps its contents.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.data_start + b, e - b)
            };
        }
        #[cfg(not(unix))]
        let _ = name;
    }
}

/// A borrowed tensor: its dtype, shape and exact stored bytes.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// The file holding it and where its bytes start, so a digest can be re-checked
    /// with standard tools (`tail -c +N | head -c L | sha256sum`).
    pub file: &'a Path,
    pub file_offset: u64,
}

impl TensorView<'_> {
    /// safetensors spelling of the dtype ("BF16", "I8", ...).
    pub fn dtype_name(&self) -> String {
        dtype_name(self.dtype)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub fn dtype_name(d: Dtype) -> String {
    // safetensors' own serialisation of the enum is the header spelling.
    match serde_json::to_value(d) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{d:?}"),
    }
}

/// Every weight file of a Hugging Face model directory.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<SafetensorsFile>,
    /// tensor name → index into `files`
    index: BTreeMap<String, usize>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// `model.safetensors.index.json` if present, else `model.safetensors`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(bad_input!("{}: not a directory", dir.display()));
        }
        let index_path = dir.join(INDEX_FILE);
        if index_path.exists() {
            Self::open_sharded(dir, &index_path)
        } else {
            let path = dir.join(SINGLE_FILE);
            if !path.exists() {
                return Err(bad_input!(
                    "{}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)",
                    dir.display()
                ));
            }
            let file = SafetensorsFile::open(&path)?;
            let index = file.names().map(|n| (n.to_string(), 0)).collect();
            Ok(Checkpoint { dir: dir.to_path_buf(), files: vec![file], index })
        }
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, "cannot read", e))?;
        let idx: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| bad_input!("{}: invalid shard index: {e}", index_path.display()))?;
        let mut shard_names: Vec<&String> = idx.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::new();
        for shard in &shard_names {
            if !is_plain_file_name(shard) {
                return Err(bad_input!("{}: shard name \"{shard}\" is not a plain file name", index_path.display()));
            }
            files.push(SafetensorsFile::open(&dir.join(shard))?);
        }
        let mut index = BTreeMap::new();
        for (name, shard) in &idx.weight_map {
            let fi = shard_names.binary_search(&shard).expect("shard listed above");
            if files[fi].tensor(name).is_none() {
                return Err(bad_input!(
                    "{}: index places tensor \"{name}\" in {shard}, which does not hold it",
                    index_path.display()
                ));
            }
            index.insert(name.clone(), fi);
        }
        // A tensor present in a shard but absent from the index would be silently dropped.
        for (fi, f) in files.iter().enumerate() {
            for name in f.names() {
                match index.get(name) {
                    Some(&owner) if owner == fi => {}
                    Some(&owner) => {
                        return Err(bad_input!(
                            "tensor \"{name}\" is stored in both {} and {}",
                            files[owner].path.display(),
                            f.path.display()
                        ));
                    }
                    None => {
                        return Err(bad_input!(
                            "{}: tensor \"{name}\" is not listed in {INDEX_FILE}",
                            f.path.display()
                        ));
                    }
                }
            }
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), files, index })
    }

    /// Tensor names in bytewise order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.files[*self.index.get(name)?].tensor(name)
    }

    /// `SafetensorsFile::release` for tensor `name`, wherever it is stored.
    pub fn release(&self, name: &str) {
        if let Some(&f) = self.index.get(name) {
            self.files[f].release(name);
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// A name that stays inside its directory: no separators, not `.`/`..`, not empty.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']) && !name.contains(':')
}

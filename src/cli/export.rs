use std::path::Path;

use super::{Common, check_pack_files, print_json};
use crate::backend::device;
use crate::error::Result;
use crate::pack::Pack;
use crate::pack::export::{MAX_SHARD_BYTES, export};

pub fn run(pack_dir: &Path, out: &Path, force: bool, common: &Common) -> Result<()> {
    let pack = Pack::open(pack_dir)?;
    check_pack_files(&pack)?;
    let (_, backend) = device::open(common.device)?;
    let e = export(&pack, backend.as_ref(), out, force, MAX_SHARD_BYTES)?;
    if common.json {
        print_json(&serde_json::json!({
            "output": out.display().to_string(),
            "files": e.files,
            "tensor_bytes": e.tensor_bytes,
            "weights_digest": pack.manifest.weights_digest,
            "pack_digest": pack.digest(),
        }));
    } else {
        println!("exported {} ({} files, {} tensor bytes)", out.display(), e.files.len(), e.tensor_bytes);
        println!("weights digest: sha256:{} (check with `ucw hash {}`)", pack.manifest.weights_digest, out.display());
    }
    Ok(())
}

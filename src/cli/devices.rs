use super::{Common, print_json};
use crate::backend::device::Devices;
use crate::error::Result;

pub fn run(common: &Common) -> Result<()> {
    let devices = Devices::discover();
    // Resolving validates --device even here, and marks which one `auto` would pick.
    let chosen = devices.resolve(common.device)?;
    if common.json {
        print_json(&serde_json::json!({ "selected": chosen, "devices": devices.infos, "skipped": devices.skipped }));
        return Ok(());
    }
    for d in &devices.infos {
        let mark = if d.index == chosen { "*" } else { " " };
        let kind = if d.index == 0 {
            "reference".to_string()
        } else if d.software {
            "software".to_string()
        } else {
            d.device_type.clone()
        };
        println!("{mark}{:>2}  {:<7} {:<10} {}", d.index, d.api, kind, d.name);
        if d.index > 0 {
            println!("       driver: {} {}", d.driver, d.driver_info);
        } else {
            println!("       {}", d.driver_info);
        }
        if let Some(l) = &d.limits {
            println!(
                "       max storage binding {} B, max buffer {} B, {} workgroups/dim, {} invocations/workgroup, {} B workgroup memory",
                l.max_storage_buffer_binding_size,
                l.max_buffer_size,
                l.max_compute_workgroups_per_dimension,
                l.max_compute_invocations_per_workgroup,
                l.max_compute_workgroup_storage_size
            );
        }
    }
    for s in &devices.skipped {
        // The last line of the reason is the innermost cause in wgpu's chain.
        let why = s.reason.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
        println!("  -  {:<7} {:<10} {} (driver {}): not usable: {why}", s.api, "skipped", s.name, s.driver_info.trim());
    }
    println!("(* = selected by --device {}; auto prefers a hardware GPU, else cpu)", common.device);
    Ok(())
}

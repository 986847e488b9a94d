//! DESIGN §3 rule 8: no floating-point values in any shader.
//!
//! Every expression naga resolves to a float type is reported: that covers arithmetic,
//! literals, conversions and loads of float buffers. ucw never needs one (floats are read
//! as raw bits through u32 views), so the rule is stricter than "no float arithmetic" and
//! simpler to trust.

use naga::valid::{FunctionInfo, ModuleInfo};
use naga::{Module, ScalarKind, TypeInner};

/// Shader files allowed to contain float expressions, with the reason. Empty: bit-exact
/// is the default and nothing has needed an exception yet.
pub const FLOAT_EXCEPTIONS: &[(&str, &str)] = &[];

fn is_float(inner: &TypeInner) -> bool {
    match inner {
        TypeInner::Scalar(s) | TypeInner::Vector { scalar: s, .. } | TypeInner::Matrix { scalar: s, .. } => {
            matches!(s.kind, ScalarKind::Float | ScalarKind::AbstractFloat)
        }
        TypeInner::Atomic(s) => s.kind == ScalarKind::Float,
        _ => false,
    }
}

fn scan(module: &Module, fun: &naga::Function, info: &FunctionInfo, where_: &str, out: &mut Vec<String>) {
    for (handle, expr) in fun.expressions.iter() {
        let inner = info[handle].ty.inner_with(&module.types);
        if is_float(inner) {
            let what = match expr {
                naga::Expression::Binary { op, .. } => format!("binary {op:?}"),
                naga::Expression::Unary { op, .. } => format!("unary {op:?}"),
                naga::Expression::Math { fun, .. } => format!("math {fun:?}"),
                naga::Expression::As { .. } => "conversion".into(),
                naga::Expression::Literal(_) => "literal".into(),
                other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("expression").to_string(),
            };
            out.push(format!("{where_}: float-valued {what}"));
        }
    }
    for (_, var) in fun.local_variables.iter() {
        if is_float(&module.types[var.ty].inner) {
            out.push(format!("{where_}: float local variable {}", var.name.as_deref().unwrap_or("?")));
        }
    }
}

/// Every float expression or declaration in a validated module, one line each.
pub fn float_uses(module: &Module, info: &ModuleInfo) -> Vec<String> {
    let mut out = Vec::new();
    for (handle, fun) in module.functions.iter() {
        let name = fun.name.as_deref().unwrap_or("?");
        scan(module, fun, &info[handle], &format!("fn {name}"), &mut out);
    }
    for (i, ep) in module.entry_points.iter().enumerate() {
        scan(module, &ep.function, info.get_entry_point(i), &format!("entry point {}", ep.name), &mut out);
    }
    for (_, gv) in module.global_variables.iter() {
        let mut ty = &module.types[gv.ty].inner;
        // Look through arrays so `array<f32>` buffers are caught too.
        while let TypeInner::Array { base, .. } = ty {
            ty = &module.types[*base].inner;
        }
        if is_float(ty) {
            out.push(format!("global {}: float type", gv.name.as_deref().unwrap_or("?")));
        }
    }
    out
}

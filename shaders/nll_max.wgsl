// First pass of the NLL (see nll.wgsl): the largest logit mantissa of each chunk of
// `p.chunk` logits of a token (4096 unless a test asks for less), one invocation per
// (token, chunk), so no invocation walks a whole vocabulary (Mesa llvmpipe stops an
// invocation after 65535 loop iterations).

struct Params {
    tokens: u32,
    vocab: u32,
    chunks: u32,
    offset: u32,
    chunk: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<i32>;    // [tokens, vocab]
@group(0) @binding(2) var<storage, read_write> cmax: array<i32>; // [tokens, chunks]

@compute @workgroup_size(64)
fn nll_max(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = p.offset + gid.x + gid.y * nwg.x * 64u;
    if (i >= p.tokens * p.chunks) {
        return;
    }
    let t = i / p.chunks;
    let j0 = (i % p.chunks) * p.chunk;
    let j1 = min(j0 + p.chunk, p.vocab);
    var m = logits[t * p.vocab + j0];
    for (var j = j0 + 1u; j < j1; j++) {
        m = max(m, logits[t * p.vocab + j]);
    }
    cmax[i] = m;
}
